"""The shrinker: a gated ASR model -> a plain ESPnet model of the same function.

Every gated part (:mod:`espnet_prune.parts`: the encoder with its front end, the decoder)
shrinks itself under the model-wide exact-target selection (:mod:`espnet_prune.budget`):
closed heads / units / channels and closed modules are cut out of the weights and the
values of the kept gates are folded into each module's output projection, so the shrunk
model computes what the gated model computes in eval mode. This module only loops over the
parts, swaps in what they return and checks every key (:func:`load_strict`).
"""

from __future__ import annotations

import argparse
import copy
from typing import Dict, Optional, Tuple

import torch


def load_strict(module: torch.nn.Module, state: Dict[str, torch.Tensor], what: str,
                may_miss: Tuple[str, ...] = ()) -> None:
    """``load_state_dict`` that names missing/unexpected keys and shape mismatches.

    Keys of ``module`` ending with one of ``may_miss`` (e.g. ``log_alpha`` when dense
    weights go into a gated model) may be absent from ``state``: they keep their values."""
    own = module.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not (may_miss and k.endswith(may_miss)))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        k for k in set(own) & set(state) if own[k].shape != state[k].shape
    )
    if missing or unexpected or mismatched:
        raise RuntimeError(
            f"{what}: state does not match the model: missing {missing[:10]}, "
            f"unexpected {unexpected[:10]}, shape mismatch {mismatched[:10]}"
        )
    module.load_state_dict(state, strict=not may_miss)


def shrink_asr_model(
    model: torch.nn.Module, train_args: argparse.Namespace
) -> Tuple[torch.nn.Module, argparse.Namespace]:
    """Replace the gated parts of an ESPnet ASR model by their shrunk versions.

    Each gated part ``name`` becomes what its ``shrink()`` returns, and the training
    arguments ``name`` / ``name_conf`` its ESPnet registry name and options. A dense
    ``transformer`` decoder becomes ``pruned_transformer`` with the same weights (the
    class that decodes fast: source keys/values once per utterance). Returns a new model
    (the input is untouched) and the updated training arguments.
    """
    from espnet_prune.parts import gated_parts

    if "encoder" not in gated_parts(model):
        raise TypeError(
            f"expected a gated_conformer encoder, found {type(model.encoder).__name__}"
        )
    was_training = model.training
    model = copy.deepcopy(model).eval()
    args = copy.deepcopy(train_args)
    parts = gated_parts(model)
    shrunk = {name: part.shrink() for name, part in parts.items()}
    for name, (module, conf) in shrunk.items():
        setattr(model, name, module)
        setattr(args, name, parts[name].shrunk_name)
        setattr(args, f"{name}_conf", conf)
    if "decoder" not in parts:
        model.decoder, decoder_name = fast_decoder(model.decoder)
        args.decoder = decoder_name or args.decoder
    return model.train(was_training), args


def fast_decoder(decoder: Optional[torch.nn.Module]) -> Tuple[Optional[torch.nn.Module], Optional[str]]:
    """An ESPnet ``transformer`` decoder as ``pruned_transformer`` (same weights, every
    key checked, fast decoding); any other decoder unchanged. Returns (decoder, its
    ESPnet name or None if unchanged)."""
    from espnet2.asr.decoder.transformer_decoder import TransformerDecoder

    from espnet_prune.pruned_decoder import PrunedTransformerDecoder

    if type(decoder) is not TransformerDecoder:
        return decoder, None
    return PrunedTransformerDecoder.from_transformer_decoder(decoder), "pruned_transformer"
