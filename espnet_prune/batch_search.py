"""ESPnet's batch beam search with its per-step bookkeeping vectorised (same hypotheses).

ESPnet 202511's ``BatchBeamSearch.search`` scores all running hypotheses at once, then
rebuilds them one by one: it unpacks the batch into ``Hypothesis`` objects, appends each
kept token with a tensor concatenation, merges score dictionaries per hypothesis and packs
everything back (``pad_sequence``, ``torch.tensor`` over lists of 0-d tensors). At beam 20 that
is a few hundred small operations per output step, whatever the size of the model.
    :class:`FastBatchBeamSearch` builds the next batch directly with indexing: the same sums in
the same order and dtypes, so the same hypotheses and scores; only the scorers' states are
still selected per hypothesis (by the scorers' own ``select_state``).

**Stopping when the 1-best is decided** (``stop_when_decided``). ESPnet stops a search
(``maxlenratio: 0``) when, for three consecutive lengths, the best hypothesis that ended
there is 10 nats below the best ended one: on the mini corpus about 7 steps after the
1-best has ended, a third of a decode's steps. When every score a step adds is a log
probability (attention decoder, CTC prefix score, LM: each at most 0, weighted by a
positive weight; no length bonus), a hypothesis' score never grows, so once the best ended
hypothesis beats every running one by a margin (:attr:`DECIDED_MARGIN`, far above float
rounding) no later hypothesis can overtake it: the search stops there with the same 1-best
and score. The rest of the n-best may differ, so :func:`espnet_prune.fast_decoding` turns
it on only for a ``Speech2Text`` that keeps the 1-best (``nbest: 1``).
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from espnet.nets.batch_beam_search import BatchBeamSearch, BatchHypothesis
from espnet.nets.beam_search import Hypothesis


def adds_log_probs(scorer: Any) -> bool:
    """Every step of ``scorer`` adds a log probability (at most 0): ESPnet's decoders, CTC
    prefix scorers and language models, or a scorer that says so (``adds_log_probs = True``)."""
    from espnet.nets.scorers.ctc import CTCPrefixScorer
    from espnet2.asr.decoder.abs_decoder import AbsDecoder
    from espnet2.lm.abs_model import AbsLM

    return bool(getattr(scorer, "adds_log_probs", False)) or isinstance(
        scorer, (AbsDecoder, CTCPrefixScorer, AbsLM))


class FastBatchBeamSearch(BatchBeamSearch):
    """``BatchBeamSearch`` with a vectorised ``search`` step (``return_hs`` and sequential
    attention over ``pre_x`` use ESPnet's step) and, with :attr:`stop_when_decided`, a stop
    as soon as the 1-best is decided (module docstring)."""

    #: stop when no running hypothesis can overtake the best ended one (same 1-best)
    stop_when_decided: bool = False
    #: nats by which the best ended hypothesis must lead every running one
    DECIDED_MARGIN = 1e-2

    def scores_never_grow(self) -> bool:
        """Every weighted scorer adds log probabilities with a weight >= 0 (a length bonus
        only with weight <= 0)."""
        for name, scorer in self.scorers.items():
            w = self.weights.get(name, 0.0)
            if w == 0:
                continue
            if type(scorer).__name__ == "LengthBonus":
                if w > 0:
                    return False
            elif w < 0 or not adds_log_probs(scorer):
                return False
        return True

    def post_process(self, i: int, maxlen: int, minlen: int, maxlenratio: float,
                     running_hyps: BatchHypothesis, ended_hyps: List[Hypothesis]) -> BatchHypothesis:
        """ESPnet's post-processing; with :attr:`stop_when_decided`, no running hypotheses
        left (the search ends) once the 1-best is decided."""
        running = super().post_process(i, maxlen, minlen, maxlenratio, running_hyps, ended_hyps)
        if (self.stop_when_decided and ended_hyps and len(running) > 0 and not self.normalize_length
                and self.scores_never_grow()):
            best_ended = max(float(h.score) for h in ended_hyps)
            if best_ended > float(running.score.max()) + self.DECIDED_MARGIN:
                return self._batch_select(running, torch.zeros(0, dtype=torch.long))
        return running

    def search(self, running_hyps: BatchHypothesis, x: torch.Tensor,
               pre_x: torch.Tensor = None) -> BatchHypothesis:
        if self.return_hs or pre_x is not None:
            return super().search(running_hyps, x, pre_x)
        n_batch = len(running_hyps)
        weighted = torch.zeros(n_batch, self.n_vocab, dtype=x.dtype, device=x.device)
        scores, states = self.score_full(running_hyps, x.expand(n_batch, *x.shape))
        for k in self.full_scorers:
            weighted += self.weights[k] * scores[k]
        part_ids = None
        if self.do_pre_beam:
            pre = weighted if self.pre_beam_score_key == "full" else scores[self.pre_beam_score_key]
            part_ids = torch.topk(pre, self.pre_beam_size, dim=-1)[1]
        part_scores, part_states = self.score_partial(running_hyps, part_ids, x)
        for k in self.part_scorers:
            weighted += self.weights[k] * part_scores[k]
        weighted += running_hyps.score.to(dtype=x.dtype, device=x.device).unsqueeze(1)

        prev, token, part_prev, part_token = self.batch_beam(weighted, part_ids)
        # ESPnet's hypotheses all have the prefix length here; its yseq keeps the prefix's
        # device and dtype
        yseq = running_hyps.yseq[prev]
        yseq = torch.cat((yseq, token.to(yseq).unsqueeze(1)), dim=1)
        new_scores: Dict[str, torch.Tensor] = {}
        for k, v in scores.items():
            new_scores[k] = running_hyps.scores[k][prev] + v[prev, token]
        for k, v in part_scores.items():
            new_scores[k] = running_hyps.scores[k][part_prev] + v[part_prev, part_token]
        new_states: Dict[str, Any] = {}
        for k, v in states.items():
            new_states[k] = [self.full_scorers[k].select_state(v, i) for i in prev]
        for k, v in part_states.items():
            scorer = self.part_scorers[k]
            if hasattr(scorer, "batch_select_state"):  # (FastCTCPrefixScorer: one gather)
                new_states[k] = scorer.batch_select_state(v, part_prev, part_token)
            else:
                new_states[k] = [scorer.select_state(v, i, t) for i, t in zip(part_prev, part_token)]
        return BatchHypothesis(
            yseq=yseq, score=weighted[prev, token],
            length=torch.full((len(prev),), yseq.size(1), dtype=torch.int64),
            scores=new_scores, states=new_states, hs=[])
