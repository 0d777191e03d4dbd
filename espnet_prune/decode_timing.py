"""Timing one beam-search decode, split by where its time goes (benchmarks, latency tables).

:func:`forced_search` builds ESPnet's batch beam search as ``Speech2Text`` does (decoder
0.7, CTC prefix scorer 0.3, full pre-beam); :func:`timed_decode` runs ``model.encode`` and
that search on one input and returns its wall time split into encoder, decoder steps
(``batch_score``; the output layer also apart), CTC scoring (``batch_init_state`` +
``batch_score_partial``) and the rest of the search (bookkeeping, pre-beam, top-k). With
:func:`force_length` no hypothesis ends before ``tokens`` steps, so every model does the
same number of steps whatever its weights.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional

import torch


def force_length(model: torch.nn.Module) -> torch.nn.Module:
    """Make end-of-sentence unreachable (output bias -1e4): decodes run to their ``maxlen``."""
    with torch.no_grad():
        model.decoder.output_layer.bias[model.eos] = -1e4
    return model


def forced_search(model: torch.nn.Module, decoder: torch.nn.Module, ctc_scorer: type, beam: int,
                  search_cls: Optional[type] = None):
    """ESPnet's ``BatchBeamSearch`` (or ``search_cls``) as ``Speech2Text`` builds it: decoder
    0.7, CTC 0.3 (``ctc_scorer`` on ``model.ctc``), full pre-beam."""
    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.scorers.length_bonus import LengthBonus

    vocab = model.vocab_size
    return (search_cls or BatchBeamSearch)(
        beam_size=beam, vocab_size=vocab, sos=model.sos, eos=model.eos,
        weights=dict(decoder=0.7, ctc=0.3, length_bonus=0.0),
        scorers=dict(decoder=decoder, ctc=ctc_scorer(model.ctc, model.eos),
                     length_bonus=LengthBonus(vocab)),
        token_list=[str(i) for i in range(vocab)], pre_beam_score_key="full",
    ).eval()


def fast_search(model: torch.nn.Module, beam: int):
    """The search :func:`espnet_prune.fast_decoding` installs, on ``model``'s (fast) decoder."""
    from espnet_prune.batch_search import FastBatchBeamSearch
    from espnet_prune.ctc_prefix import FastCTCPrefixScorer

    return forced_search(model, model.decoder, FastCTCPrefixScorer, beam, FastBatchBeamSearch)


class PartTimer:
    """Seconds spent in the decoder's and the CTC scorer's calls of one beam search, in the
    decoder's output layer (part of the decoder's time), and the decoder's step count."""

    METHODS = (("decoder", "batch_score"), ("ctc", "batch_score_partial"), ("ctc", "batch_init_state"))

    def __init__(self, search) -> None:
        self.seconds = {"decoder": 0.0, "ctc": 0.0, "output": 0.0}
        self.steps = 0
        for name, method in self.METHODS:
            scorer = search.scorers[name]
            setattr(scorer, method, self._timed(name, getattr(scorer, method)))
        out = search.scorers["decoder"].output_layer
        self._start = 0.0
        self._hooks = [out.register_forward_pre_hook(self._output_start),
                       out.register_forward_hook(self._output_end)]

    def _output_start(self, module, args) -> None:
        self._start = time.perf_counter()

    def _output_end(self, module, args, result) -> None:
        self.seconds["output"] += time.perf_counter() - self._start

    def remove(self, search) -> None:
        """Back to the scorers' own methods, no hooks."""
        for h in self._hooks:
            h.remove()
        for name, method in self.METHODS:
            search.scorers[name].__dict__.pop(method, None)

    def _timed(self, name: str, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.steps += fn.__name__ == "batch_score"
        return run


def timed_decode(model: torch.nn.Module, search, speech: torch.Tensor, tokens: int) -> Dict[str, Any]:
    """One decode of ``speech`` ``(1, samples)`` (or ``(1, frames, dim)`` features) for at most
    ``tokens`` output tokens: total, encoder, decoder-step, output-layer, CTC and other search
    seconds, the decoder's step count and the n-best. ``speech`` is copied (ESPnet's
    ``GlobalMVN`` normalizes in place)."""
    timer = PartTimer(search)
    with torch.inference_mode():
        t0 = time.perf_counter()
        enc, _ = model.encode(speech.clone(), torch.tensor([speech.size(1)]))
        t1 = time.perf_counter()
        x = enc[0]
        hyps = search(x=x, maxlenratio=(tokens + 0.5) / x.size(0), minlenratio=0.0)
        t2 = time.perf_counter()
    timer.remove(search)
    dec, ctc = timer.seconds["decoder"], timer.seconds["ctc"]
    return dict(total=t2 - t0, encoder=t1 - t0, decoder=dec, output=timer.seconds["output"],
                ctc=ctc, rest=(t2 - t1) - dec - ctc, steps=timer.steps, hyps=hyps)
