"""espnet_prune: learned structured pruning of ESPnet Conformer ASR models.

Importing the package is cheap; :func:`register` adds the plugin's classes to
ESPnet's ASR task (``encoder: gated_conformer`` / ``pruned_conformer``,
``decoder: pruned_transformer``) so that ESPnet's own config parsing, training and
inference code can build them. :func:`fast_decoding` makes a built ESPnet
``Speech2Text`` decode with the fast exact decoder.
"""

from typing import Any

from espnet_prune.lazy_imports import defer_text_frontends
from espnet_prune.typeguard_cache import install as cache_typeguard_instrumentation

__version__ = "0.1.0"

# ESPnet's text package imports g2p_en and inflect (5 s of CPU) that ASR with character or
# BPE tokens never uses: load them on first use instead, in every process of the plugin.
defer_text_frontends()
# ESPnet's @typechecked functions are re-instrumented at every import (3 s of CPU): keep the
# instrumented code on disk between processes instead.
cache_typeguard_instrumentation()

ENCODERS = {
    "gated_conformer": "espnet_prune.encoder:GatedConformerEncoder",
    "pruned_conformer": "espnet_prune.pruned_encoder:PrunedConformerEncoder",
}

DECODERS = {
    "pruned_transformer": "espnet_prune.pruned_decoder:PrunedTransformerDecoder",
    "gated_transformer": "espnet_prune.gated_decoder:GatedTransformerDecoder",
}

MODELS = {"prune_espnet": "espnet_prune.model:ESPnetPruneASRModel"}


def register() -> None:
    """Register the plugin's classes in ESPnet's ASR task choices (idempotent).

    Encoders go to ``espnet2.tasks.asr.encoder_choices``, decoders to
    ``decoder_choices``, models to ``model_choices``.
    """
    import importlib

    from espnet2.tasks import asr

    for choices, table in ((asr.encoder_choices, ENCODERS), (asr.decoder_choices, DECODERS),
                           (asr.model_choices, MODELS)):
        for name, target in table.items():
            module, cls = target.split(":")
            choices.classes[name] = getattr(importlib.import_module(module), cls)


def fast_decoding(speech2text: Any, require: bool = True) -> bool:
    """Decode with the fast exact Transformer decoder (see :func:`espnet_prune.inference.fast_decoding`).

    ``speech2text`` is a built ``espnet2.bin.asr_inference.Speech2Text``; its ESPnet
    ``transformer`` decoder is replaced, weights key-checked, by ``pruned_transformer``
    (same scores and hypotheses, source-attention keys/values computed once per utterance).
    """
    from espnet_prune.inference import fast_decoding as _fast_decoding

    return _fast_decoding(speech2text, require=require)
