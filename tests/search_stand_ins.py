"""Stand-ins for beam-search tests: CTC posteriors chosen by the test, a bigram "decoder",
and one decode through ESPnet's search classes with a chosen CTC scorer."""

from __future__ import annotations

import torch
from espnet.nets.scorer_interface import BatchScorerInterface
from espnet.nets.scorers.length_bonus import LengthBonus

VOCAB = 40  # 0 = blank, VOCAB - 1 = sos/eos


class LogitsCTC(torch.nn.Module):
    """A CTC module whose 'encoder output' are its logits (posteriors chosen by the test)."""

    def log_softmax(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x, dim=-1)


class Bigram(BatchScorerInterface, torch.nn.Module):
    """A decoder stand-in: fixed random log-probabilities of the next token given the last."""

    adds_log_probs = True  # (FastBatchBeamSearch.stop_when_decided)

    def __init__(self, vocab: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.table = torch.log_softmax(torch.randn(vocab, vocab, generator=g) * 2, -1)

    def init_state(self, x):
        return None

    def score(self, y, state, x):
        return self.table[y[-1]].to(x.dtype), None

    def batch_score(self, ys, states, xs):
        return self.table[ys[:, -1]].to(xs.dtype), states


def logits(frames: int, peaky: bool, seed: int = 0) -> torch.Tensor:
    """(frames, VOCAB) CTC logits: flat noise, or a peaky CTC-like alignment of random tokens
    (a token every 2-5 frames, blank in between, a few near-ties)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, VOCAB, generator=g) * (1.0 if peaky else 0.3)
    if peaky:
        x[:, 0] += 6.0
        t = 0
        while t < frames:
            tok = int(torch.randint(1, VOCAB - 1, (1,), generator=g))
            x[t, tok] += 9.0 + 3.0 * float(torch.rand(1, generator=g))
            t += int(torch.randint(2, 6, (1,), generator=g))
    return x


def decode(scorer_cls, search_cls, x, beam, ctc_weight, dtype, maxlenratio=0.0,
           length_bonus=0.1, stop_when_decided=False, steps=None):
    """The n-best of one search (decoder weight 1 - ctc_weight); ``steps`` (a list) gets
    the number of search steps appended."""
    scorers = dict(decoder=Bigram(VOCAB), ctc=scorer_cls(LogitsCTC(), VOCAB - 1),
                   length_bonus=LengthBonus(VOCAB))
    weights = dict(decoder=1.0 - ctc_weight, ctc=ctc_weight, length_bonus=length_bonus)
    search = search_cls(beam_size=beam, vocab_size=VOCAB, sos=VOCAB - 1, eos=VOCAB - 1,
                        weights=weights, scorers=scorers, token_list=[str(i) for i in range(VOCAB)],
                        pre_beam_score_key=None if ctc_weight == 1.0 else "full")
    if stop_when_decided:
        search.stop_when_decided = True
    calls = [0]
    step = search.search

    def counted(*args, **kwargs):
        calls[0] += 1
        return step(*args, **kwargs)

    search.search = counted
    with torch.no_grad():
        out = search(x=x.to(dtype), maxlenratio=maxlenratio, minlenratio=0.0)
    if steps is not None:
        steps.append(calls[0])
    return out
