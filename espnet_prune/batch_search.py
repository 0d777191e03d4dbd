"""ESPnet's batch beam search with its per-step bookkeeping vectorised (same hypotheses).

ESPnet 202511's ``BatchBeamSearch.search`` scores all running hypotheses at once, then
rebuilds them one by one: it unpacks the batch into ``Hypothesis`` objects, appends each
kept token with a tensor concatenation, merges score dictionaries per hypothesis and packs
everything back (``pad_sequence``, ``torch.tensor`` over lists of 0-d tensors). At beam 20 that
is a few hundred small operations per output step, whatever the size of the model.
:class:`FastBatchBeamSearch` builds the next batch directly with indexing: the same sums in
the same order and dtypes, so the same hypotheses and scores; only the scorers' states are
still selected per hypothesis (by the scorers' own ``select_state``).
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from espnet.nets.batch_beam_search import BatchBeamSearch, BatchHypothesis


class FastBatchBeamSearch(BatchBeamSearch):
    """``BatchBeamSearch`` with a vectorised ``search`` step (``return_hs`` and sequential
    attention over ``pre_x`` use ESPnet's step)."""

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
            new_states[k] = [self.part_scorers[k].select_state(v, i, t)
                             for i, t in zip(part_prev, part_token)]
        return BatchHypothesis(
            yseq=yseq, score=weighted[prev, token],
            length=torch.full((len(prev),), yseq.size(1), dtype=torch.int64),
            scores=new_scores, states=new_states, hs=[])
