"""Decoding with ESPnet's ``Speech2Text``: the fast exact decoder in, or ESPnet's algorithm back.

:func:`fast_decoding` swaps a built ``Speech2Text``'s ESPnet ``transformer`` decoder for a
:class:`~espnet_prune.pruned_decoder.PrunedTransformerDecoder` holding the same weights (same
hypotheses and scores, less work per step); :func:`espnet_decoding` makes a
``pruned_transformer`` run ESPnet's own incremental algorithm (the reference for timing).
"""

from __future__ import annotations

from typing import Any

from espnet_prune.pruned_decoder import PrunedTransformerDecoder


def fast_decoding(speech2text: Any, require: bool = True) -> bool:
    """Make an ESPnet ``Speech2Text`` decode with :class:`PrunedTransformerDecoder`.

    Replaces ``speech2text.asr_model.decoder`` (an ESPnet ``TransformerDecoder``) by a
    :class:`PrunedTransformerDecoder` holding the same weights (loaded with every key
    checked), and points every beam-search scorer that used the old decoder at the new one.

    Args:
        speech2text: ``espnet2.bin.asr_inference.Speech2Text`` (already built).
        require: raise when the model cannot use the fast decoder (another decoder type,
            no beam search, a quantized decoder); with False, return False instead.
    Returns:
        True when the fast decoder is in use.
    """
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


def espnet_decoding(speech2text: Any) -> None:
    """Make an ESPnet ``Speech2Text`` decode with ESPnet's own incremental algorithm.

    The reference for timing comparisons: an ESPnet ``TransformerDecoder`` already does;
    a :class:`PrunedTransformerDecoder` (``decoder: pruned_transformer``, which ESPnet's
    class cannot hold) runs ESPnet's ``forward_one_step`` / ``score`` / ``batch_score`` on its
    layers, re-projecting the encoder output and the prefix at every step.
    """
    decoder = getattr(speech2text.asr_model, "decoder", None)
    if isinstance(decoder, PrunedTransformerDecoder):
        decoder.use_fast_decoding = False
