"""espnet_prune: learned structured pruning of ESPnet Conformer ASR models.

Importing the package is cheap; :func:`register` adds the plugin's classes to
ESPnet's ASR task (``encoder: gated_conformer`` / ``pruned_conformer``) so that
ESPnet's own config parsing, training and inference code can build them.
"""

__version__ = "0.1.0"

ENCODERS = {
    "gated_conformer": "espnet_prune.encoder:GatedConformerEncoder",
    "pruned_conformer": "espnet_prune.pruned_encoder:PrunedConformerEncoder",
}


def register() -> None:
    """Register the plugin's encoders in ``espnet2.tasks.asr.encoder_choices`` (idempotent)."""
    import importlib

    from espnet2.tasks import asr

    for name, target in ENCODERS.items():
        module, cls = target.split(":")
        asr.encoder_choices.classes[name] = getattr(importlib.import_module(module), cls)
