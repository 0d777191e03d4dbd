"""Decoding with ESPnet's ``Speech2Text``: the fast exact search in, or ESPnet's algorithm back.

:func:`fast_decoding` swaps a built ``Speech2Text``'s ESPnet ``transformer`` decoder for a
:class:`~espnet_prune.pruned_decoder.PrunedTransformerDecoder` holding the same weights, and
its CTC prefix scorer for :class:`~espnet_prune.ctc_prefix.FastCTCPrefixScorer` (same
hypotheses and scores, less work per step); :func:`espnet_decoding` puts ESPnet's own
algorithms back (the reference for timing).
"""

from __future__ import annotations

from typing import Any

from espnet.nets.batch_beam_search import BatchBeamSearch

from espnet_prune.batch_search import FastBatchBeamSearch
from espnet_prune.ctc_prefix import FastCTCPrefixScorer
from espnet_prune.pruned_decoder import PrunedTransformerDecoder


def fast_decoding(speech2text: Any, require: bool = True) -> bool:
    """Make an ESPnet ``Speech2Text`` decode with :class:`PrunedTransformerDecoder`.

    Replaces ``speech2text.asr_model.decoder`` (an ESPnet ``TransformerDecoder``) by a
    :class:`PrunedTransformerDecoder` holding the same weights (loaded with every key
    checked), and points every beam-search scorer that used the old decoder at the new one.
    Whatever the decoder, the beam search's CTC prefix scorer becomes
    :class:`FastCTCPrefixScorer` (see :func:`fast_ctc_scoring`) and ESPnet's
    ``BatchBeamSearch`` a :class:`~espnet_prune.batch_search.FastBatchBeamSearch` (the same
    search with its per-step bookkeeping vectorised; when ``speech2text.nbest`` is 1, it stops
    as soon as the 1-best is decided: the same 1-best, fewer steps).

    Args:
        speech2text: ``espnet2.bin.asr_inference.Speech2Text`` (already built).
        require: raise when the model cannot use the fast decoder (another decoder type,
            no beam search, a quantized decoder); with False, return False instead.
    Returns:
        True when the fast decoder is in use.
    """
    in_use = _use_fast_decoder(speech2text, require)
    beam = getattr(speech2text, "beam_search", None)
    fast_ctc_scoring(beam)
    if type(beam) is BatchBeamSearch:  # how Speech2Text itself picks the batch search
        beam.__class__ = FastBatchBeamSearch
    if type(beam) is FastBatchBeamSearch:  # only the 1-best is kept: stop once it is decided
        beam.stop_when_decided = getattr(speech2text, "nbest", 1) == 1
    return in_use


def _use_fast_decoder(speech2text: Any, require: bool) -> bool:
    """The decoder half of :func:`fast_decoding`."""
    from espnet.nets.beam_search import BeamSearch

    model = speech2text.asr_model
    old = getattr(model, "decoder", None)
    if isinstance(old, PrunedTransformerDecoder):
        return True
    try:
        beam = getattr(speech2text, "beam_search", None)
        if not isinstance(beam, BeamSearch):
            raise TypeError(
                f"fast decoding needs ESPnet's BeamSearch/BatchBeamSearch, got {type(beam).__name__}"
            )
        new = PrunedTransformerDecoder.from_transformer_decoder(old)
    except (TypeError, ValueError, RuntimeError):
        if require:
            raise
        return False
    replaced = 0
    for table in (beam.scorers, beam.full_scorers, beam.part_scorers):
        for k, v in list(table.items()):
            if v is old:
                table[k] = new
                replaced += 1
    for k in list(beam.nn_dict.keys()):
        if beam.nn_dict[k] is old:
            beam.nn_dict[k] = new
    if not replaced:
        if require:
            raise ValueError("the beam search does not score with the model's decoder")
        return False
    model.decoder = new
    return True


def _swap_scorers(beam: Any, old_type: type, make: Any) -> int:
    """Replace every scorer of exactly ``old_type`` in ``beam``'s tables by ``make(scorer)``."""
    tables = [getattr(beam, name, None) for name in ("scorers", "full_scorers", "part_scorers")]
    new: dict = {}
    for table in tables:
        for k, v in list((table or {}).items()):
            if type(v) is old_type:
                if id(v) not in new:
                    new[id(v)] = make(v)
                table[k] = new[id(v)]
    return len(new)


def fast_ctc_scoring(beam: Any) -> bool:
    """Make ESPnet's beam search ``beam`` score CTC prefixes with :class:`FastCTCPrefixScorer`.

    Every ESPnet ``CTCPrefixScorer`` among its scorers is replaced by the fast scorer on the
    same CTC module (same hypotheses, scores equal up to float rounding; subclasses such as
    ESPnet's UASR scorer are left alone). Returns whether the search now scores CTC that way.
    """
    from espnet.nets.scorers.ctc import CTCPrefixScorer

    _swap_scorers(beam, CTCPrefixScorer, FastCTCPrefixScorer.from_scorer)
    return any(isinstance(v, FastCTCPrefixScorer)
               for v in (getattr(beam, "scorers", None) or {}).values())


def espnet_decoding(speech2text: Any) -> None:
    """Make an ESPnet ``Speech2Text`` decode with ESPnet's own incremental algorithm.

    The reference for timing comparisons: an ESPnet ``TransformerDecoder`` already does;
    a :class:`PrunedTransformerDecoder` (``decoder: pruned_transformer``, which ESPnet's
    class cannot hold) runs ESPnet's ``forward_one_step`` / ``score`` / ``batch_score`` on its
    layers, re-projecting the encoder output and the prefix at every step. ESPnet's
    ``CTCPrefixScorer`` and ``BatchBeamSearch`` come back in place of ours.
    """
    from espnet.nets.scorers.ctc import CTCPrefixScorer

    decoder = getattr(speech2text.asr_model, "decoder", None)
    if isinstance(decoder, PrunedTransformerDecoder):
        decoder.use_fast_decoding = False
    beam = getattr(speech2text, "beam_search", None)
    _swap_scorers(beam, FastCTCPrefixScorer, lambda v: CTCPrefixScorer(v.ctc, v.eos))
    if type(beam) is FastBatchBeamSearch:
        beam.__class__ = BatchBeamSearch
        beam.__dict__.pop("stop_when_decided", None)


def quantize_dynamic(model: Any, modules: Any = ("Linear",), dtype: str = "qint8") -> None:
    """ESPnet's ``--quantize_asr_model``, in place: dynamic quantization of ``model``'s
    ``modules`` (names in ``torch.nn``) to ``dtype``; modules keep their identity, so a beam
    search built on the model (e.g. after :func:`fast_decoding`) scores with the quantized
    layers."""
    import torch

    torch.quantization.quantize_dynamic(model, qconfig_spec={getattr(torch.nn, m) for m in modules},
                                        dtype=getattr(torch, dtype), inplace=True)
