"""Exact CTC prefix scores without a Python loop over frames: a drop-in for ESPnet's scorer.

ESPnet's ``CTCPrefixScorer`` (``CTCPrefixScoreTH`` in batch beam search, ``CTCPrefixScore`` in
the plain one) runs the CTC forward recursion of every hypothesis x candidate pair as a Python
loop over all encoder frames at every output step: O(T) small tensor operations per step,
O(T^2) per utterance, most of a CPU decode's search time. :class:`FastCTCPrefixScorer` gives
the same scores another way (``../shared/DESIGN.md`` §2.5):

* The prefix score of ``h = g + c`` needs no recursion at all:
  ``log psi(h) = logsumexp_t (phi_{t-1}(g, c) + x_t(c))`` with ``phi`` the forward variables of
  ``g`` (``r^n + r^b``; only ``r^b`` when ``c`` repeats ``g``'s last token). One vectorised
  reduction over (frames x hypotheses x candidates), chunked over candidates so memory stays
  bounded (:data:`CHUNK_ELEMENTS`) when the whole vocabulary is scored (CTC weight 1.0).
* The forward variables ``r^n(h), r^b(h)`` are needed only for the hypotheses the beam keeps
  (``beam`` of the ``hypotheses x candidates`` scored), so they are computed lazily: a kept
  hypothesis carries a :class:`PrefixState` that points at the step that scored it, and the next
  scoring call computes all pending ones at once. Both recursions are linear in the probability
  domain, so each is a closed form over time, one cumulative log-sum-exp (float64)::

      r^n_t = A_t + logcumsumexp_s (phi_{s-1} - A_{s-1}),   A_t = sum_{u<=t} x_u(c)
      r^b_t = B_t + logcumsumexp_s (r^n_{s-1} - B_{s-1}),   B_t = sum_{u<=t} x_u(blank)

The scores are ESPnet's up to float rounding (the same sums, reduced in another order, on
forward variables that differ from ESPnet's float32 loop by rounding only); the tests check
hypotheses and scores against ESPnet 202511 in ``BeamSearch`` and ``BatchBeamSearch``.
ESPnet's attention-window option (``margin``) is not supported: ``Speech2Text`` never sets it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from espnet.nets.scorers.ctc import CTCPrefixScorer

#: ESPnet's log(0) stand-in (``CTCPrefixScoreTH.logzero``).
LOGZERO = -1e10
#: Most elements of one (frames x hypotheses x candidates) block of a prefix-score reduction
#: (float32: 4 bytes each); larger candidate sets are scored in chunks.
CHUNK_ELEMENTS = 1 << 22


@dataclass
class ScoredStep:
    """What one scoring call saw, enough to compute a kept hypothesis's forward variables.

    Attributes:
        r_prev: (T, 2, n_hyps) forward variables ``r^n, r^b`` of the scored prefixes.
        last: (n_hyps,) last token of each prefix.
        output_length: prefix length without <sos>.
        log_psi: (n_hyps, O) log prefix probabilities of the extended prefixes.
    """

    r_prev: torch.Tensor
    last: torch.Tensor
    output_length: int
    log_psi: torch.Tensor


@dataclass
class PrefixState:
    """CTC state of one hypothesis: its prefix score and its (T, 2) forward variables.

    ``forward`` is None until needed; ``step``, ``hyp`` and ``token`` say how to compute it
    (hypothesis ``hyp`` of ``step`` extended by ``token``).
    """

    score: torch.Tensor  # scalar: log psi of the prefix
    step: Optional[ScoredStep] = None
    hyp: int = 0
    token: int = 0
    forward: Optional[torch.Tensor] = None


class CTCPrefixScoreFast:
    """Batch CTC prefix scoring over utterances of one padded batch.

    Args:
        logp: (B, T, O) CTC log-posteriors (not modified).
        lengths: (B,) valid frames per utterance.
        blank: blank id.
        eos: end-of-sentence id (scored as the prefix ending at the last frame).
    """

    def __init__(self, logp: torch.Tensor, lengths: torch.Tensor, blank: int, eos: int) -> None:
        logp = logp.detach().clone()
        for i, n in enumerate(lengths.tolist()):  # padding: blank with probability one
            logp[i, n:, :] = LOGZERO
            logp[i, n:, blank] = 0.0
        # one row of frames per (utterance, token): every gather reads contiguous rows
        self.logp = logp.transpose(1, 2).reshape(-1, logp.size(1)).contiguous()  # (B * O, T)
        self.blank, self.eos = blank, eos
        self.batch, self.odim = logp.size(0), logp.size(2)
        self.end_frames = torch.as_tensor(lengths, device=logp.device).long() - 1

    @property
    def frames(self) -> int:
        return self.logp.size(1)

    def rows(self, utt: torch.Tensor, tokens: Any, frames: Optional[int] = None) -> torch.Tensor:
        """(len(utt), frames) log-posteriors of ``tokens[i]`` in utterance ``utt[i]``."""
        rows = self.logp.index_select(0, utt * self.odim + tokens)
        return rows if frames is None else rows[:, :frames]

    # ------------------------------------------------------------------ initial state

    def initial_forward(self, n_hyps: int) -> torch.Tensor:
        """(T, 2, B * n_hyps) forward variables of the empty prefix: only blanks."""
        r = torch.full((self.frames, 2, self.batch, n_hyps), LOGZERO, dtype=self.logp.dtype,
                       device=self.logp.device)
        utts = torch.arange(self.batch, device=self.logp.device)
        r[:, 1] = torch.cumsum(self.rows(utts, self.blank).t(), 0).unsqueeze(2)
        return r.view(self.frames, 2, -1)

    # ------------------------------------------------------------------ prefix scores

    def prefix_scores(self, r_prev: torch.Tensor, last: torch.Tensor, output_length: int,
                      candidates: Optional[torch.Tensor]) -> torch.Tensor:
        """log psi of every prefix extended by every candidate.

        Args:
            r_prev: (T, 2, n_bh) forward variables of the prefixes.
            last: (n_bh,) last token of each prefix.
            output_length: prefix length without <sos>.
            candidates: (n_bh, S) token ids to score, or None for every token.
        Returns:
            (n_bh, O) log psi; ``LOGZERO`` where not scored and for blank; eos gets the
            probability of the prefix itself.
        """
        n_bh = r_prev.size(2)
        n_hyps = n_bh // self.batch
        T = self.frames
        r_sum = torch.logaddexp(r_prev[:, 0], r_prev[:, 1])  # (T, n_bh)
        start = max(output_length, 1)
        utt = torch.arange(n_bh, device=r_prev.device) // n_hyps
        log_psi = torch.full((n_bh, self.odim), LOGZERO, dtype=r_prev.dtype, device=r_prev.device)
        if candidates is None:
            candidates = torch.arange(self.odim, device=r_prev.device).expand(n_bh, -1)
        phi = r_sum[start - 1:T - 1].t().unsqueeze(1)  # (n_bh, 1, T - start): phi_{t-1}
        phi_blank = r_prev[start - 1:T - 1, 1].t()  # (n_bh, T - start)
        offset = (utt * self.odim).unsqueeze(1)
        chunk = max(1, CHUNK_ELEMENTS // max(1, T * n_bh))
        for c0 in range(0, candidates.size(1), chunk):
            cand = candidates[:, c0:c0 + chunk]  # (n_bh, S)
            x = self.logp.index_select(0, (cand + offset).view(-1)).view(n_bh, -1, T)
            terms = x[:, :, start:] + phi  # log phi_{t-1} + x_t, t in [start, T)
            # a repeated last token continues only the paths that end in blank
            hs, js = torch.nonzero(cand == last.unsqueeze(1), as_tuple=True)
            terms[hs, js] = x[hs, js, start:] + phi_blank[hs]
            scores = _logsumexp_last(terms)
            if output_length == 0:  # paths that start with c at the first frame
                scores = torch.logaddexp(scores, x[:, :, 0])
            log_psi.scatter_(1, cand, scores)
        rows = torch.arange(n_bh, device=r_prev.device)
        log_psi[:, self.eos] = r_sum[self.end_frames[utt], rows]
        if self.eos != self.blank:
            log_psi[:, self.blank] = LOGZERO
        return log_psi

    # ------------------------------------------------------------------ forward variables

    def forward_variables(self, step: ScoredStep, hyps: torch.Tensor,
                          tokens: torch.Tensor) -> torch.Tensor:
        """(T, 2, k) forward variables ``r^n, r^b`` of prefix ``hyps[i]`` + ``tokens[i]``.

        Closed forms of ESPnet's recursion (frames from ``start = max(output_length, 1)``,
        ``r^n_{start-1}`` = x_0(c) for the first token and log 0 otherwise, ``r^b_{start-1}``
        = log 0), computed in float64.
        """
        r_prev = step.r_prev
        T, n_bh = r_prev.size(0), r_prev.size(2)
        start = max(step.output_length, 1)
        utt = hyps // (n_bh // self.batch)
        x_c = self.rows(utt, tokens, T).t().double()  # (T, k)
        x_b = self.rows(utt, self.blank, T).t().double()
        prev = r_prev[:, :, hyps].double()  # (T, 2, k)
        phi = torch.where((tokens == step.last[hyps]).unsqueeze(0), prev[:, 1],
                          torch.logaddexp(prev[:, 0], prev[:, 1]))
        r = torch.full((T, 2, hyps.numel()), LOGZERO, dtype=torch.float64, device=x_c.device)
        if step.output_length == 0:
            r[0, 0] = x_c[0]
        if start < T:
            r[start:, 0] = _linear_scan(r[start - 1, 0], phi[start - 1:T - 1], x_c[start:])
            r[start:, 1] = _linear_scan(r[start - 1, 1], r[start - 1:T - 1, 0], x_b[start:])
        return r.clamp_(min=LOGZERO).to(r_prev.dtype)

    def materialize(self, states: Sequence[PrefixState]) -> None:
        """Compute the forward variables of every pending state, one call per scoring step."""
        groups: Dict[int, List[PrefixState]] = {}
        for s in states:
            if s.forward is None:
                groups.setdefault(id(s.step), []).append(s)
        for group in groups.values():
            step = group[0].step
            device = step.r_prev.device
            hyps = torch.tensor([s.hyp for s in group], device=device)
            tokens = torch.tensor([s.token for s in group], device=device)
            r = self.forward_variables(step, hyps, tokens)
            for i, s in enumerate(group):
                s.forward, s.step = r[:, :, i], None

    # ------------------------------------------------------------------ one step

    def __call__(self, y: Any, states: Optional[Sequence[PrefixState]],
                 candidates: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ScoredStep]:
        """Scores of every prefix in ``y`` extended by each candidate.

        Args:
            y: n_bh prefixes (<sos> first, all of one length), B * n_hyps of them: a
                (n_bh, L) tensor or a list of 1-D tensors.
            states: their :class:`PrefixState` (None for the first step).
            candidates: (n_bh, S) token ids to score, or None for the whole vocabulary.
        Returns:
            (n_bh, O) ``log psi - log psi(prefix)``, and the :class:`ScoredStep` the kept
            hypotheses point to.
        """
        if torch.is_tensor(y):  # (n_bh, L): BatchBeamSearch's running prefixes
            output_length, n_bh, last = y.size(1) - 1, y.size(0), y[:, -1].to(self.logp.device)
        else:
            output_length, n_bh = len(y[0]) - 1, len(y)
            last = torch.as_tensor([int(yi[-1]) for yi in y], device=self.logp.device)
        if states is None:
            r_prev = self.initial_forward(n_bh // self.batch)
            s_prev: Any = 0.0
        else:
            self.materialize(states)
            r_prev = torch.stack([s.forward for s in states], dim=2)
            s_prev = torch.stack([s.score for s in states]).unsqueeze(1)
        log_psi = self.prefix_scores(r_prev, last, output_length, candidates)
        step = ScoredStep(r_prev=r_prev, last=last, output_length=output_length, log_psi=log_psi)
        return log_psi - s_prev, step

    def select(self, step: ScoredStep, hyp: int, token: int) -> PrefixState:
        """The (pending) state of hypothesis ``hyp`` of ``step`` extended by ``token``."""
        return PrefixState(score=step.log_psi[hyp, token], step=step, hyp=int(hyp),
                           token=int(token))

    def select_many(self, step: ScoredStep, hyps: torch.Tensor, tokens: torch.Tensor) -> List[PrefixState]:
        """:meth:`select` of each ``(hyps[i], tokens[i])``, with one gather of the scores."""
        scores = step.log_psi[hyps, tokens].unbind(0)
        return [PrefixState(score=s, step=step, hyp=h, token=t)
                for s, h, t in zip(scores, hyps.tolist(), tokens.tolist())]

    # ------------------------------------------------------------------ streaming

    def extend_prob(self, logp: torch.Tensor) -> None:
        """Take (1, T', O) posteriors of a longer input; the first T frames stay as they are."""
        if logp.size(1) <= self.frames:
            return
        new = logp.detach().transpose(1, 2).reshape(-1, logp.size(1)).clone()
        new[:, : self.frames] = self.logp
        self.logp = new
        self.end_frames = torch.full_like(self.end_frames, self.frames - 1)

    def extend_state(self, state: Optional[PrefixState]) -> Optional[PrefixState]:
        """``state`` with its forward variables extended over frames added since (blanks)."""
        if state is None:
            return None
        self.materialize([state])
        r = state.forward
        n = r.size(0)
        if n >= self.frames:
            return state
        blank = self.logp[self.blank, n:].to(r.dtype)  # utterance 0 (streaming: one)
        tail = torch.full((self.frames - n, 2), LOGZERO, dtype=r.dtype, device=r.device)
        tail[:, 1] = r[-1, 1] + torch.cumsum(blank, 0)
        return PrefixState(score=state.score, forward=torch.cat((r, tail), dim=0))


def _logsumexp_last(x: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp(x, -1)`` for finite ``x``, overwriting ``x``.

    Terms far below the largest are raised to ``log(tiny) + 1`` (-86.3 in float32) before
    ``exp``: torch's vectorised ``exp`` is about 10x slower on inputs whose result would be
    denormal or zero. Each raised term adds at most ``e * tiny`` (3.2e-38 in float32) to a sum
    that is at least 1.
    """
    m = x.amax(-1, keepdim=True)
    floor = math.log(torch.finfo(x.dtype).tiny) + 1.0
    return x.sub_(m).clamp_(min=floor).exp_().sum(-1).log_().add_(m.squeeze(-1))


def _linear_scan(init: torch.Tensor, inflow: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``r_t = logaddexp(r_{t-1}, inflow_{t-1}) + x_t`` for all t at once (log domain, dim 0).

    Args:
        init: (k,) r before the first frame.
        inflow: (n, k) the term added before frame t (``inflow[i]`` goes with ``x[i]``).
        x: (n, k) log-probabilities of the frames.
    Returns:
        (n, k) r at each frame: ``A_t + logcumsumexp([init, inflow_s - A_{s-1}])`` with ``A`` the
        cumulative sum of ``x`` (float64 keeps the cumulative sums exact enough).
    """
    a = torch.cumsum(x, 0)
    a_before = torch.cat((torch.zeros_like(a[:1]), a[:-1]), 0)
    seq = torch.cat((init.unsqueeze(0), inflow - a_before), 0)
    return a + torch.logcumsumexp(seq, 0)[1:]


class FastCTCPrefixScorer(CTCPrefixScorer):
    """ESPnet's ``CTCPrefixScorer`` interface on :class:`CTCPrefixScoreFast`.

    Same constructor, scores and states' meaning; usable by ``BeamSearch`` (``init_state`` /
    ``score_partial`` / ``select_state``) and ``BatchBeamSearch`` (``batch_init_state`` /
    ``batch_score_partial``) and the streaming searches (``extend_prob`` / ``extend_state``).
    """

    @classmethod
    def from_scorer(cls, scorer: CTCPrefixScorer) -> "FastCTCPrefixScorer":
        """The fast scorer on ``scorer``'s CTC module and eos id."""
        return cls(scorer.ctc, scorer.eos)

    def _build(self, x: torch.Tensor) -> CTCPrefixScoreFast:
        logp = self.ctc.log_softmax(x.unsqueeze(0)).detach()  # (1, T, O)
        self.impl = CTCPrefixScoreFast(logp, torch.tensor([logp.size(1)]), 0, self.eos)
        return self.impl

    # plain BeamSearch: one hypothesis per call
    def init_state(self, x: torch.Tensor) -> Tuple[float, None]:
        self._build(x)
        return 0.0, None

    def score_partial(self, y: torch.Tensor, ids: torch.Tensor, state: Any,
                      x: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        _, prefix = state  # the prefix score is also in prefix.score
        scores, step = self.impl(y.unsqueeze(0), None if prefix is None else [prefix],
                                 ids.view(1, -1))
        # presub scores (log psi) of the candidates, and where their states come from
        return scores[0, ids].to(x.dtype), (step.log_psi[0, ids], (step, ids))

    def batch_init_state(self, x: torch.Tensor) -> None:
        self._build(x)
        return None

    def batch_score_partial(self, y: torch.Tensor, ids: Optional[torch.Tensor], state: Any,
                            x: torch.Tensor) -> Tuple[torch.Tensor, ScoredStep]:
        states = None if state[0] is None else list(state)
        return self.impl(y, states, ids)

    def batch_select_state(self, state: ScoredStep, ids: torch.Tensor, new_ids: torch.Tensor) -> List[PrefixState]:
        """``[select_state(state, i, t) for i, t in zip(ids, new_ids)]`` of a batch search step,
        in one gather (:class:`~espnet_prune.batch_search.FastBatchBeamSearch` calls it)."""
        return self.impl.select_many(state, ids, new_ids)

    def select_state(self, state: Any, i: int, new_id: Optional[int] = None) -> Any:
        if isinstance(state, ScoredStep):  # BatchBeamSearch: hypothesis i + token new_id
            return self.impl.select(state, i, new_id)
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], tuple):
            log_psi, (step, ids) = state  # BeamSearch: candidate i of one hypothesis
            return log_psi[i], self.impl.select(step, 0, int(ids[i]))
        return None if state is None else state[i]

    def extend_prob(self, x: torch.Tensor) -> None:
        self.impl.extend_prob(self.ctc.log_softmax(x.unsqueeze(0)).detach())

    def extend_state(self, state: Sequence[Optional[PrefixState]]) -> List[Optional[PrefixState]]:
        return [self.impl.extend_state(s) for s in state]
