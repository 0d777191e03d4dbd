"""The shrinker: gated Conformer -> heterogeneous dense ``pruned_conformer``.

Every gate decision is read in eval mode: the encoder's exact-target selection
(:meth:`GatedConformerEncoder.eval_selection`, :mod:`espnet_prune.budget`) says
which units each block keeps (:meth:`GatedConformerBlock.kept_units`):
closed heads / units / channels and closed modules are cut out of the weights,
and the values of the kept gates are folded into each module's output
projection, so that the shrunk model computes what the gated model computes in
eval mode.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any, Dict, Optional, Tuple

import torch

from espnet_prune.blocks import NORMS, ConformerBlock, block_sizes, subset_module
from espnet_prune.encoder import GatedConformerBlock, GatedConformerEncoder
from espnet_prune.pruned_encoder import PrunedConformerEncoder, pruned_encoder_conf
from espnet_prune.structure import MODULES, BlockStructure


def shrink_block(block: GatedConformerBlock, keep: Dict[str, torch.Tensor]) -> ConformerBlock:
    """Dense copy of ``block`` without what the encoder's eval-mode selection ``keep`` drops."""
    kept = block.kept_units(keep)
    modules: Dict[str, Any] = {}
    for name, (_, attr) in MODULES.items():
        module = getattr(block, attr)
        if module is None or len(kept[name][0]) == 0:
            modules[attr] = None
            continue
        keep, unit_scale, whole = kept[name]
        modules[attr] = subset_module(module, keep.to(module_device(module)), unit_scale, whole)
    new = ConformerBlock(
        block.size,
        modules["self_attn"],
        modules["feed_forward"],
        modules["feed_forward_macaron"],
        modules["conv_module"],
        block.dropout.p,
        block.stochastic_depth_rate,
        ff_scale=block.ff_scale,
        final_norm=block.final_norm,
    )
    for norm in NORMS:
        if norm in new._modules:
            getattr(new, norm).load_state_dict(getattr(block, norm).state_dict())
    return new.to(next(block.parameters()).device).train(block.training)


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def block_structure(block: ConformerBlock) -> BlockStructure:
    sizes = block_sizes(block)
    return BlockStructure(**{MODULES[name][0]: n for name, n in sizes.items()})


def shrink_encoder(
    gated: GatedConformerEncoder, encoder_conf: Dict[str, Any]
) -> Tuple[PrunedConformerEncoder, Dict[str, Any]]:
    """Shrink a gated encoder built from ``encoder_conf``.

    Returns the pruned encoder (weights loaded with every key matched) and its
    ``encoder_conf``.
    """
    blocks = [shrink_block(b, k) for b, k in zip(gated.encoders, gated.eval_selection())]
    structure = [block_structure(b) for b in blocks]
    channels = None
    if gated.gated_frontend:
        embed, channels = gated.embed.shrink(gated.frontend_keep())
    conf = pruned_encoder_conf(encoder_conf, structure, channels)
    pruned = PrunedConformerEncoder(gated.dims.input_size, **conf)
    state = {
        k: v for k, v in gated.state_dict().items()
        if not k.startswith("encoders.") and not (channels is not None and k.startswith("embed."))
    }
    if channels is not None:
        state.update({f"embed.{k}": v for k, v in embed.state_dict().items()})
    for i, b in enumerate(blocks):
        state.update({f"encoders.{i}.{k}": v for k, v in b.state_dict().items()})
    load_strict(pruned, state, what="shrunk encoder")
    device = next(gated.parameters()).device
    return pruned.to(device).train(gated.training), conf


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

    The encoder becomes a ``pruned_conformer``; the decoder a ``pruned_transformer``:
    shrunk when it is gated, else the same dense weights in the class that decodes
    fast (source keys/values once per utterance). Returns a new model (the input is
    untouched) and the updated training arguments.
    """
    if not isinstance(model.encoder, GatedConformerEncoder):
        raise TypeError(
            f"expected a gated_conformer encoder, found {type(model.encoder).__name__}"
        )
    was_training = model.training
    model = copy.deepcopy(model).eval()
    args = copy.deepcopy(train_args)
    if hasattr(model.decoder, "shrink"):  # gated decoder: selected jointly with the encoder
        model.decoder, args.decoder_conf = model.decoder.shrink()
        args.decoder = "pruned_transformer"
    else:
        model.decoder, decoder_name = fast_decoder(model.decoder)
        args.decoder = decoder_name or args.decoder
    encoder, conf = shrink_encoder(model.encoder, dict(train_args.encoder_conf or {}))
    model.encoder = encoder
    args.encoder = "pruned_conformer"
    args.encoder_conf = conf
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

