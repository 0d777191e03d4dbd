"""Conformer block whose modules may be missing, and module slicing.

:class:`ConformerBlock` is ESPnet's ``EncoderLayer`` (pre-norm) with three
changes that pruning needs:

* any of its four modules (FFN1, MHSA, conv, FFN2) may be ``None``; the block
  then skips that residual branch *and* its pre-norm;
* ``ff_scale`` and ``norm_final`` are fixed by the dense architecture, not by
  which modules remain (ESPnet derives them from the macaron FFN / conv module);
* a subclass may scale each branch (:meth:`branch_scales`), which is how the
  gated block applies module gates.

The ``subset_*`` functions build a smaller copy of an attention / FFN / conv
module that keeps chosen heads / units / channels, optionally folding per-unit
and per-module scales into the output projection. They serve both the shrinker
and the construction of a :class:`~espnet_prune.pruned_encoder.PrunedConformerEncoder`.
"""

from __future__ import annotations

import copy
from typing import Dict, Optional, Union

import torch
from espnet.nets.pytorch_backend.conformer.convolution import ConvolutionModule
from espnet.nets.pytorch_backend.conformer.encoder_layer import EncoderLayer
from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention
from espnet.nets.pytorch_backend.transformer.layer_norm import LayerNorm
from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import (
    PositionwiseFeedForward,
)

from espnet_prune.structure import MODULES

Tensor = torch.Tensor


class ConformerBlock(EncoderLayer):
    """Pre-norm Conformer block with optional modules.

    Args:
        size: model dimension d.
        self_attn / feed_forward / feed_forward_macaron / conv_module: the
            modules, each possibly ``None`` (removed).
        dropout_rate: residual dropout.
        stochastic_depth_rate: probability of skipping the whole block (train).
        ff_scale: residual scale of both FFNs (0.5 when the dense block is macaron).
        final_norm: whether the block ends with ``norm_final`` (dense block has conv).
    """

    def __init__(
        self,
        size: int,
        self_attn: Optional[torch.nn.Module],
        feed_forward: Optional[torch.nn.Module],
        feed_forward_macaron: Optional[torch.nn.Module],
        conv_module: Optional[torch.nn.Module],
        dropout_rate: float,
        stochastic_depth_rate: float = 0.0,
        ff_scale: float = 0.5,
        final_norm: bool = True,
    ) -> None:
        super().__init__(
            size,
            self_attn,
            feed_forward,
            feed_forward_macaron,
            conv_module,
            dropout_rate,
            normalize_before=True,
            concat_after=False,
            stochastic_depth_rate=stochastic_depth_rate,
        )
        # A removed module takes its pre-norm with it.
        if feed_forward is None:
            del self.norm_ff
        if self_attn is None:
            del self.norm_mha
        # ff_scale and norm_final belong to the dense architecture.
        self.ff_scale = ff_scale
        if final_norm and conv_module is None:
            self.norm_final = LayerNorm(size)
        elif not final_norm and conv_module is not None:
            del self.norm_final
        self.final_norm = final_norm

    @classmethod
    def from_espnet_layer(cls, layer: EncoderLayer) -> "ConformerBlock":
        """Take over the modules (and parameters) of an ESPnet ``EncoderLayer``."""
        if not layer.normalize_before or layer.concat_after:
            raise ValueError(
                "pruning needs normalize_before: true and concat_after: false"
            )
        block = cls(
            layer.size,
            layer.self_attn,
            layer.feed_forward,
            layer.feed_forward_macaron,
            layer.conv_module,
            layer.dropout.p,
            layer.stochastic_depth_rate,
            ff_scale=layer.ff_scale,
            final_norm=layer.conv_module is not None,
        )
        block.load_state_dict(layer.state_dict())
        return block

    def branch_scales(self) -> Dict[str, Optional[Tensor]]:
        """Scale of each module's residual branch (``None`` = 1). Gated blocks override."""
        return {}

    def forward(self, x_input, mask, cache=None):
        """Same maths as ESPnet's pre-norm ``EncoderLayer.forward``.

        Args:
            x_input: ``(B, T, d)`` or ``((B, T, d), pos_emb)``.
            mask: ``(B, 1, T)`` boolean mask of valid frames.
        Returns:
            the block output in the input's form, and ``mask``.
        """
        if cache is not None:
            raise NotImplementedError("ConformerBlock does not support a cache")
        if isinstance(x_input, tuple):
            x, pos_emb = x_input[0], x_input[1]
        else:
            x, pos_emb = x_input, None

        coeff = 1.0
        if self.training and self.stochastic_depth_rate > 0:
            if torch.rand(1).item() < self.stochastic_depth_rate:
                return ((x, pos_emb), mask) if pos_emb is not None else (x, mask)
            coeff = 1.0 / (1 - self.stochastic_depth_rate)

        scales = self.branch_scales()

        def add(x: Tensor, name: str, branch: Tensor, weight: float) -> Tensor:
            scale = scales.get(name)
            if scale is not None:
                branch = branch * scale
            return x + coeff * weight * self.dropout(branch)

        if self.feed_forward_macaron is not None:
            h = self.feed_forward_macaron(self.norm_ff_macaron(x))
            x = add(x, "ffn1", h, self.ff_scale)
        if self.self_attn is not None:
            h = self.norm_mha(x)
            if pos_emb is not None:
                h = self.self_attn(h, h, h, pos_emb, mask)
            else:
                h = self.self_attn(h, h, h, mask)
            x = add(x, "mha", h, 1.0)
        if self.conv_module is not None:
            x = add(x, "conv", self.conv_module(self.norm_conv(x)), 1.0)
        if self.feed_forward is not None:
            x = add(x, "ffn2", self.feed_forward(self.norm_ff(x)), self.ff_scale)
        if self.final_norm:
            x = self.norm_final(x)

        if pos_emb is not None:
            return (x, pos_emb), mask
        return x, mask

    def module(self, name: str) -> Optional[torch.nn.Module]:
        """Module named as in :data:`~espnet_prune.structure.MODULES`, or None."""
        return getattr(self, MODULES[name][1])


# ----------------------------------------------------------------------------
# Output projections that accept a mask on their input features
# ----------------------------------------------------------------------------


class MaskedInputLinear(torch.nn.Linear):
    """``nn.Linear`` whose input features ``(..., in)`` are multiplied by ``input_mask``.

    Same parameter names as ``nn.Linear``, so dense checkpoints load unchanged.
    """

    input_mask: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        if self.input_mask is not None:
            x = x * self.input_mask
        return super().forward(x)


class MaskedInputConv1d(torch.nn.Conv1d):
    """``nn.Conv1d`` whose input channels ``(B, C, T)`` are multiplied by ``input_mask`` (C,)."""

    input_mask: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        if self.input_mask is not None:
            x = x * self.input_mask[:, None]
        return super().forward(x)


def as_masked_input(layer: Union[torch.nn.Linear, torch.nn.Conv1d]) -> torch.nn.Module:
    """Return a masked-input twin of ``layer`` sharing its parameters."""
    twin = copy.copy(layer)
    twin.__class__ = MaskedInputLinear if isinstance(layer, torch.nn.Linear) else MaskedInputConv1d
    twin.input_mask = None
    return twin


def output_layer(module: torch.nn.Module) -> torch.nn.Module:
    """The projection that closes a module (where unit masks and scales go)."""
    if isinstance(module, MultiHeadedAttention):
        return module.linear_out
    if isinstance(module, PositionwiseFeedForward):
        return module.w_2
    if isinstance(module, ConvolutionModule):
        return module.pointwise_conv2
    raise TypeError(f"cannot prune a {type(module).__name__}")


# ----------------------------------------------------------------------------
# Slicing: smaller copies of modules keeping chosen units
# ----------------------------------------------------------------------------


def _subset_linear(
    layer: torch.nn.Module,
    out_idx: Optional[Tensor] = None,
    in_idx: Optional[Tensor] = None,
    in_scale: Optional[Tensor] = None,
    out_scale: Optional[Tensor] = None,
) -> torch.nn.Module:
    """Plain ``nn.Linear`` / ``nn.Conv1d`` (kernel 1 or depthwise) with rows/cols kept.

    ``in_scale`` (one value per kept input) and ``out_scale`` (scalar) are folded
    into the weight (and ``out_scale`` into the bias).
    """
    w = layer.weight.detach()
    b = layer.bias.detach() if layer.bias is not None else None
    if out_idx is not None:
        w = w[out_idx]
        b = b[out_idx] if b is not None else None
    if in_idx is not None:
        w = w[:, in_idx]
    if in_scale is not None:
        shape = (1, -1) + (1,) * (w.dim() - 2)
        w = w * in_scale.detach().to(w).reshape(shape)
    if out_scale is not None:
        s = out_scale.detach().to(w)
        w = w * s
        b = b * s if b is not None else None
    if isinstance(layer, torch.nn.Linear):
        new = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    else:
        new = torch.nn.Conv1d(
            w.shape[1], w.shape[0], layer.kernel_size, layer.stride, layer.padding,
            layer.dilation, 1, bias=b is not None,
        )
    new = new.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def subset_attention(
    att: MultiHeadedAttention,
    heads: Tensor,
    head_scale: Optional[Tensor] = None,
    out_scale: Optional[Tensor] = None,
) -> MultiHeadedAttention:
    """Copy of ``att`` keeping ``heads`` (indices, shape (h',)).

    Keeps the q/k/v/pos rows of those heads, their ``pos_bias_u/v`` rows and
    their ``linear_out`` columns (times ``head_scale[h]``); ``out_scale`` scales
    the whole output.
    """
    dk = att.d_k
    rows = (heads[:, None] * dk + torch.arange(dk, device=heads.device)).reshape(-1)
    new = copy.copy(att)
    new._parameters = dict(att._parameters)
    new._modules = dict(att._modules)
    new.h = int(heads.numel())
    new.attn = None
    for name in ("linear_q", "linear_k", "linear_v", "linear_pos"):
        if hasattr(att, name):
            setattr(new, name, _subset_linear(getattr(att, name), out_idx=rows))
    col_scale = head_scale.repeat_interleave(dk) if head_scale is not None else None
    new.linear_out = _subset_linear(att.linear_out, in_idx=rows, in_scale=col_scale, out_scale=out_scale)
    for name in ("pos_bias_u", "pos_bias_v"):
        if hasattr(att, name):
            setattr(new, name, torch.nn.Parameter(getattr(att, name).detach()[heads].clone()))
    return new


def subset_ffn(
    ffn: PositionwiseFeedForward,
    units: Tensor,
    unit_scale: Optional[Tensor] = None,
    out_scale: Optional[Tensor] = None,
) -> PositionwiseFeedForward:
    """Copy of ``ffn`` keeping hidden ``units`` (indices)."""
    new = copy.copy(ffn)
    new._modules = dict(ffn._modules)
    new.w_1 = _subset_linear(ffn.w_1, out_idx=units)
    new.w_2 = _subset_linear(ffn.w_2, in_idx=units, in_scale=unit_scale, out_scale=out_scale)
    return new


def subset_conv(
    conv: ConvolutionModule,
    channels: Tensor,
    channel_scale: Optional[Tensor] = None,
    out_scale: Optional[Tensor] = None,
) -> ConvolutionModule:
    """Copy of ``conv`` keeping depthwise ``channels`` (indices).

    ``pointwise_conv1`` keeps rows ``c`` and ``c + C`` (the two GLU halves).
    """
    n_ch = conv.depthwise_conv.in_channels
    new = copy.copy(conv)
    new._modules = dict(conv._modules)
    new.pointwise_conv1 = _subset_linear(
        conv.pointwise_conv1, out_idx=torch.cat([channels, channels + n_ch])
    )
    dw = conv.depthwise_conv
    k = len(channels)
    new_dw = torch.nn.Conv1d(
        k, k, dw.kernel_size, dw.stride, dw.padding, dw.dilation, groups=k,
        bias=dw.bias is not None,
    ).to(dw.weight)
    with torch.no_grad():
        new_dw.weight.copy_(dw.weight[channels])
        if dw.bias is not None:
            new_dw.bias.copy_(dw.bias[channels])
    new.depthwise_conv = new_dw
    bn = conv.norm
    new_bn = torch.nn.BatchNorm1d(k, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    new_bn = new_bn.to(device=bn.weight.device, dtype=bn.weight.dtype)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            src = getattr(bn, name)
            if src is not None:
                getattr(new_bn, name).copy_(src[channels])
        if bn.num_batches_tracked is not None:
            new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
    new.norm = new_bn
    new.pointwise_conv2 = _subset_linear(
        conv.pointwise_conv2, in_idx=channels, in_scale=channel_scale, out_scale=out_scale
    )
    return new


def subset_module(
    module: torch.nn.Module,
    keep: Tensor,
    unit_scale: Optional[Tensor] = None,
    out_scale: Optional[Tensor] = None,
) -> torch.nn.Module:
    """Dispatch to :func:`subset_attention` / :func:`subset_ffn` / :func:`subset_conv`."""
    if isinstance(module, MultiHeadedAttention):
        return subset_attention(module, keep, unit_scale, out_scale)
    if isinstance(module, PositionwiseFeedForward):
        return subset_ffn(module, keep, unit_scale, out_scale)
    if isinstance(module, ConvolutionModule):
        return subset_conv(module, keep, unit_scale, out_scale)
    raise TypeError(f"cannot prune a {type(module).__name__}")


def unit_count(module: torch.nn.Module) -> int:
    """Number of prunable units of a module (heads, hidden units or channels)."""
    if isinstance(module, MultiHeadedAttention):
        return module.h
    if isinstance(module, PositionwiseFeedForward):
        return module.w_1.out_features
    if isinstance(module, ConvolutionModule):
        return module.depthwise_conv.in_channels
    raise TypeError(f"cannot prune a {type(module).__name__}")


def resize_block(block: ConformerBlock, sizes: Dict[str, int]) -> None:
    """In place: keep the first ``sizes[module]`` units of each module (0 removes it)."""
    for name, (_, attr) in MODULES.items():
        module = getattr(block, attr)
        n = sizes.get(name, 0)
        if module is None:
            if n:
                raise ValueError(f"module {name} is absent from the dense block")
            continue
        if n == 0:
            remove_module(block, name)
        elif n != unit_count(module):
            setattr(block, attr, subset_module(module, torch.arange(n)))


#: Pre-norm of each module; a block also has ``norm_final`` when the dense block has conv.
MODULE_NORMS = {"ffn1": "norm_ff_macaron", "mha": "norm_mha", "conv": "norm_conv", "ffn2": "norm_ff"}
NORMS = (*MODULE_NORMS.values(), "norm_final")


def remove_module(block: ConformerBlock, name: str) -> None:
    """Drop module ``name`` and its pre-norm from ``block``."""
    setattr(block, MODULES[name][1], None)
    norm = MODULE_NORMS[name]
    if norm in block._modules:
        del block._modules[norm]



def block_sizes(block: ConformerBlock) -> Dict[str, int]:
    """Units of each module of ``block`` keyed by module name (0 = absent)."""
    return {
        name: unit_count(block.module(name)) if block.module(name) is not None else 0
        for name in MODULES
    }
