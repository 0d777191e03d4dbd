"""Decoder layers with removable sublayers, and slicing them (the decoder's :mod:`blocks`).

:class:`PrunedDecoderLayer` is ESPnet's ``DecoderLayer`` whose self-attention, source
attention or FFN may be removed (``None``, with its norm); :func:`run_sublayers` is the
layer's residual structure with pluggable attentions (the fast decoder plugs in its cached
attention); :func:`slice_decoder_layer` cuts a layer down to chosen heads / units, folding
optional per-unit and per-sublayer scales into the output projections (what a gated
decoder shrinks through); :func:`resize_decoder_layer` keeps the first units of each.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Tuple

import torch
from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention
from espnet.nets.pytorch_backend.transformer.decoder_layer import DecoderLayer
from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import (
    PositionwiseFeedForward,
)

from espnet_prune.blocks import subset_attention, subset_ffn, unit_count
from espnet_prune.structure import SUBLAYERS, DecoderLayerStructure

Tensor = torch.Tensor


def is_plain_linear(module: torch.nn.Module) -> bool:
    """A plain ``nn.Linear`` without hooks (safe to apply as ``F.linear`` on its weights)."""
    return (type(module) is torch.nn.Linear and not module._forward_hooks
            and not module._forward_pre_hooks)


def apply_module(module: torch.nn.Module, x: Tensor) -> Tensor:
    """``module(x)``, without the module-call overhead for plain linears."""
    if is_plain_linear(module):
        return torch.nn.functional.linear(x, module.weight, module.bias)
    return module(x)


def apply_dropout(module: torch.nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` for a dropout module, skipped (identity) in eval mode."""
    return module(x) if module.training else x


class PrunedDecoderLayer(DecoderLayer):
    """ESPnet ``DecoderLayer`` whose sublayers may be ``None`` (removed with their norm).

    Same attribute and parameter names as ESPnet's layer, so a complete layer has
    ESPnet's state-dict keys and runs ESPnet's own ``forward``.
    """

    #: every submodule a decoder layer may have besides its three sublayers
    EXTRA_MODULES = ("norm1", "norm2", "norm3", "dropout", "concat_linear1", "concat_linear2")

    @classmethod
    def from_layer(cls, layer: DecoderLayer) -> "PrunedDecoderLayer":
        """Copy of an ESPnet ``DecoderLayer`` (or of a pruned or gated subclass) as this class.

        Only the modules of ESPnet's layer are copied (sublayers, norms, dropout, concat
        linears), so a subclass's extra state (e.g. gates) is left behind.
        """
        if getattr(layer, "sequential_attn", None) is not None:
            raise ValueError("decoder layers with sequential_attn (multi-decoder) are not supported")
        with torch.random.fork_rng(devices=[]):  # the fresh concat linears are replaced below
            new = cls(layer.size, copy_attention(layer.self_attn),
                      copy_attention(layer.src_attn), copy.deepcopy(layer.feed_forward),
                      layer.dropout.p, layer.normalize_before, layer.concat_after)
        for name in cls.EXTRA_MODULES:
            if name not in new._modules:
                continue
            if name in layer._modules:
                setattr(new, name, copy.deepcopy(getattr(layer, name)))
            else:
                del new._modules[name]
        return new.train(layer.training)

    def complete(self) -> bool:
        return all(getattr(self, attr) is not None for _, attr, _, _ in SUBLAYERS.values())

    def structure(self) -> DecoderLayerStructure:
        return decoder_layer_structure(self)

    def forward(self, tgt, tgt_mask, memory, memory_mask, cache=None,
                pre_memory=None, pre_memory_mask=None):
        """ESPnet's ``DecoderLayer.forward`` with removed sublayers skipped.

        Args:
            tgt: ``(B, L, d)`` layer input; tgt_mask: ``(B, L, L)`` or None.
            memory: ``(B, T, d)``; memory_mask: ``(B, 1, T)`` or None.
            cache: ``(B, L-1, d)`` previous outputs (then only the last position is computed).
        Returns:
            ``(x, tgt_mask, memory, memory_mask)`` with x ``(B, L, d)``.
        """
        if pre_memory is not None:
            raise NotImplementedError("PrunedDecoderLayer has no sequential attention")
        if self.complete():
            return super().forward(tgt, tgt_mask, memory, memory_mask, cache=cache)
        xq, self_fn = cached_query(self, tgt, tgt_mask, cached=cache is not None)
        x = run_sublayers(
            self, xq, self_fn, lambda h: self.src_attn(h, memory, memory, memory_mask)
        )
        if cache is not None:
            x = torch.cat([cache, x], dim=1)
        return x, tgt_mask, memory, memory_mask

    def forward_partially_AR(self, tgt, tgt_mask, tgt_lengths, memory, memory_mask, cache=None):
        """ESPnet's partially autoregressive step: needs every sublayer and every source head.

        (ESPnet's ``expand_kv`` path assumes ``heads * d_k == size`` in source attention.)
        """
        if not self.complete() or self.src_attn.h * self.src_attn.d_k != self.size:
            raise NotImplementedError(
                "partially autoregressive decoding needs every sublayer of every decoder layer "
                "and all source-attention heads"
            )
        return super().forward_partially_AR(tgt, tgt_mask, tgt_lengths, memory, memory_mask, cache)


def copy_attention(att: Optional[torch.nn.Module]) -> Optional[torch.nn.Module]:
    """Deep copy of an attention module without the attention weights ESPnet keeps in
    ``attn`` (a non-leaf tensor after a forward under autograd cannot be deep-copied)."""
    if att is None:
        return None
    kept = getattr(att, "attn", None)
    memo = {id(kept): None} if isinstance(kept, torch.Tensor) else {}
    return copy.deepcopy(att, memo)


def cached_query(
    layer: DecoderLayer, tgt: Tensor, tgt_mask: Optional[Tensor], cached: bool
) -> Tuple[Tensor, Callable[[Tensor], Tensor]]:
    """ESPnet's cached layer step: the query positions and their self-attention.

    Args:
        layer: an ESPnet / pruned decoder layer.
        tgt: ``(B, L, d)`` layer input; tgt_mask: ``(B | 1, L, L)`` or None.
        cached: the outputs of the first ``L-1`` positions are cached, so only the last
            position is computed (its queries attend to the whole normalized input).
    Returns:
        the query input ``(B, L | 1, d)`` and the self-attention function of
        :func:`run_sublayers`.
    """
    if not cached:
        xq, q_mask = tgt, tgt_mask
    else:
        xq = tgt[:, -1:, :]
        q_mask = tgt_mask[:, -1:, :] if tgt_mask is not None else None
    h_full = None
    if layer.self_attn is not None and cached:
        h_full = layer.norm1(tgt) if layer.normalize_before else tgt

    def self_fn(h: Tensor) -> Tensor:
        kv = h if h_full is None else h_full
        return layer.self_attn(h, kv, kv, q_mask)

    return xq, self_fn


def run_sublayers(
    layer: DecoderLayer,
    x: Tensor,
    self_fn: Callable[[Tensor], Tensor],
    src_fn: Callable[[Tensor], Tensor],
) -> Tensor:
    """The residual structure of an ESPnet decoder layer, with pluggable attentions.

    Args:
        layer: an ESPnet / pruned decoder layer (its norms, FFN, concat linears, dropout).
        x: ``(B, n, d)`` layer input at the query positions.
        self_fn / src_fn: map the (normalized when ``normalize_before``) query input
            ``(B, n, d)`` to the attention output ``(B, n, d)``.
    Returns:
        ``(B, n, d)`` layer output; removed (``None``) sublayers are skipped with their norm.
    """
    for name, (_, attr, norm_name, concat_name) in SUBLAYERS.items():
        module = getattr(layer, attr)
        if module is None:
            continue
        norm = getattr(layer, norm_name)
        h = norm(x) if layer.normalize_before else x
        if name == "self_attn":
            out = self_fn(h)
        elif name == "src_attn":
            out = src_fn(h)
        elif type(module) is PositionwiseFeedForward and not module.training:
            out = apply_module(module.w_2, module.activation(apply_module(module.w_1, h)))
        else:
            out = module(h)
        if layer.concat_after and concat_name is not None:
            x = x + apply_module(getattr(layer, concat_name), torch.cat((h, out), dim=-1))
        else:
            x = x + apply_dropout(layer.dropout, out)
        if not layer.normalize_before:
            x = norm(x)
    return x


def decoder_layer_structure(layer: DecoderLayer) -> DecoderLayerStructure:
    """Kept units of each sublayer of an (ESPnet or pruned) decoder layer."""
    sizes = {}
    for field_name, attr, _, _ in SUBLAYERS.values():
        module = getattr(layer, attr)
        sizes[field_name] = 0 if module is None else unit_count(module)
    return DecoderLayerStructure(**sizes)


def remove_sublayer(layer: DecoderLayer, name: str) -> None:
    """In place: drop sublayer ``name`` with its norm (and concat linear)."""
    _, attr, norm, concat = SUBLAYERS[name]
    setattr(layer, attr, None)
    for sub in (norm, concat):
        if sub is not None and sub in layer._modules:
            del layer._modules[sub]


def scaled_linear(linear: torch.nn.Linear, scale: Tensor) -> torch.nn.Linear:
    """Copy of ``linear`` computing ``scale * linear(x)`` (scale folded into weight and bias)."""
    new = copy.deepcopy(linear)
    s = scale.detach().to(new.weight)
    with torch.no_grad():
        new.weight.mul_(s)
        if new.bias is not None:
            new.bias.mul_(s)
    return new


def slice_decoder_layer(
    layer: DecoderLayer,
    self_heads: Optional[Tensor] = None,
    src_heads: Optional[Tensor] = None,
    ffn_units: Optional[Tensor] = None,
    *,
    self_head_scale: Optional[Tensor] = None,
    src_head_scale: Optional[Tensor] = None,
    ffn_unit_scale: Optional[Tensor] = None,
    self_scale: Optional[Tensor] = None,
    src_scale: Optional[Tensor] = None,
    ffn_scale: Optional[Tensor] = None,
) -> PrunedDecoderLayer:
    """Smaller copy of a decoder layer keeping chosen heads / units, scales folded in.

    Args:
        layer: ESPnet ``DecoderLayer`` (or :class:`PrunedDecoderLayer`); not modified.
        self_heads / src_heads / ffn_units: long indices ``(k,)`` of the kept
            self-attention heads, source-attention heads and FFN hidden units; ``None``
            keeps the sublayer whole, an empty tensor removes it (with its norm and, with
            ``concat_after``, its ``concat_linear``).
        self_head_scale / src_head_scale / ffn_unit_scale: ``(k,)`` multipliers of each
            kept head's / unit's output, folded into ``linear_out`` / ``w_2`` columns.
        self_scale / src_scale / ffn_scale: scalar multiplier of the whole sublayer
            branch (before the residual add), folded into ``linear_out`` / ``w_2`` (or into
            ``concat_linear`` with ``concat_after``).
    Returns:
        a :class:`PrunedDecoderLayer` on the same device and dtype, in the same train/eval
        mode, computing ``x + scale * sum_kept(unit_scale * unit contribution)`` per sublayer.
    """
    new = PrunedDecoderLayer.from_layer(layer)
    plan = {
        "self_attn": (self_heads, self_head_scale, self_scale),
        "src_attn": (src_heads, src_head_scale, src_scale),
        "ffn": (ffn_units, ffn_unit_scale, ffn_scale),
    }
    for name, (keep, unit_scale, out_scale) in plan.items():
        _, attr, _, concat = SUBLAYERS[name]
        module = getattr(new, attr)
        if module is None:
            if keep is not None and keep.numel() > 0:
                raise ValueError(f"{name} was already removed from this layer")
            continue
        if keep is not None and keep.numel() == 0:
            remove_sublayer(new, name)
            continue
        if keep is None and unit_scale is None and out_scale is None:
            continue
        n = unit_count(module)
        weight = next(module.parameters())
        if keep is None:
            keep = torch.arange(n, device=weight.device)
        keep = keep.to(device=weight.device, dtype=torch.long)
        if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n):
            raise ValueError(f"{name}: unit indices must lie in [0, {n})")
        if unit_scale is not None and unit_scale.numel() != keep.numel():
            raise ValueError(f"{name}: {unit_scale.numel()} unit scales for {keep.numel()} units")
        fold_into_concat = out_scale is not None and layer.concat_after and concat is not None
        module_scale = None if fold_into_concat else out_scale
        if isinstance(module, MultiHeadedAttention):
            sliced = subset_attention(module, keep, unit_scale, module_scale)
            # subset_attention shares the modules it does not slice; own copies here
            for sub in ("q_norm", "k_norm", "dropout"):
                if hasattr(sliced, sub):
                    setattr(sliced, sub, copy.deepcopy(getattr(module, sub)))
        else:
            sliced = subset_ffn(module, keep, unit_scale, module_scale)
            sliced.dropout = copy.deepcopy(module.dropout)
        setattr(new, attr, sliced)
        if fold_into_concat:
            setattr(new, concat, scaled_linear(getattr(new, concat), out_scale))
    return new.train(layer.training)


def resize_decoder_layer(layer: DecoderLayer, structure: DecoderLayerStructure) -> PrunedDecoderLayer:
    """Copy of ``layer`` keeping the first ``structure`` heads / units of each sublayer."""
    dense = decoder_layer_structure(layer)
    keep = {}
    for name, (field_name, _, _, _) in SUBLAYERS.items():
        n, have = getattr(structure, field_name), getattr(dense, field_name)
        if n > have:
            raise ValueError(f"{field_name}={n} exceeds the layer's {have}")
        keep[name] = None if n == have else torch.arange(n)
    return slice_decoder_layer(layer, keep["self_attn"], keep["src_attn"], keep["ffn"])
