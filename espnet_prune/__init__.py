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


MODELS = {"prune_espnet": "espnet_prune.model:ESPnetPruneASRModel"}


def register() -> None:
    """Register the plugin's classes in ESPnet's ASR task choices (idempotent).

    Encoders go to ``espnet2.tasks.asr.encoder_choices``, models to ``model_choices``.
    """
    import importlib

    from espnet2.tasks import asr

    for choices, table in ((asr.encoder_choices, ENCODERS), (asr.model_choices, MODELS)):
        for name, target in table.items():
            module, cls = target.split(":")
            choices.classes[name] = getattr(importlib.import_module(module), cls)
