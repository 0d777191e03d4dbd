"""Exact and expected cost (parameters, MACs) of an encoder or decoder structure.

Encoder: every function takes, per block and module, a :class:`ModuleCounts`: the kept
units and whether the module is present. With integers (from a
:class:`~espnet_prune.structure.BlockStructure`) the result is the exact count
of the shrunk model; with gate probabilities (tensors) it is the differentiable
expected cost that pruning training drives to its target (DESIGN 2.2).

MACs count multiply-accumulates of matrix products and convolutions (biases,
norms, activations and softmax are not counted), for the encoder only
(subsampling front end + blocks), at ``seconds`` of audio with
``frames_per_second`` feature frames (100 for a 10 ms hop).

Decoder: :func:`decoder_cost` gives the exact parameters and MACs of a Transformer
decoder structure as :class:`~espnet_prune.pruned_decoder.PrunedTransformerDecoder` runs
it (see its docstring for the MAC convention); :class:`DecoderLayerCounts` takes
probabilities for expected costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from espnet_prune.structure import (
    MODULES,
    BlockStructure,
    ConformerDims,
    DecoderDims,
    DecoderLayerStructure,
)

Number = Union[int, float, torch.Tensor]

#: (kernel, stride) of each Conv2d of ESPnet's subsampling front ends.
_SUBSAMPLING_CONVS: Dict[str, List[Tuple[int, int]]] = {
    "conv2d": [(3, 2), (3, 2)],
    "conv2d1": [(3, 1), (3, 1)],
    "conv2d2": [(3, 2), (3, 1)],
    "conv2d6": [(3, 2), (5, 3)],
    "conv2d8": [(3, 2), (3, 2), (3, 2)],
}


@dataclass
class ModuleCounts:
    """Kept units of one module and whether the module is present (0/1 or a probability)."""

    units: Number
    present: Number


def counts_from_structure(block: BlockStructure) -> Dict[str, ModuleCounts]:
    """Exact counts of a block structure: a module is present iff it keeps a unit."""
    out = {}
    for name in MODULES:
        n = block.units(name)
        out[name] = ModuleCounts(n, 1 if n > 0 else 0)
    return out


# ----------------------------------------------------------------------------
# Per-unit and fixed costs of each module
# ----------------------------------------------------------------------------


def _module_params(dims: ConformerDims, name: str) -> Tuple[int, int]:
    """(params per kept unit, params present with the module whatever its size)."""
    d, dk, k = dims.output_size, dims.d_k, dims.cnn_module_kernel
    norm = 2 * d  # the module's pre-LayerNorm
    if name in ("ffn1", "ffn2"):
        return 2 * d + 1, d + norm  # w_1 row + bias, w_2 column | w_2 bias
    if name == "mha":
        per_head = 3 * (d * dk + dk) + dk * d  # q/k/v rows + biases, linear_out columns
        if dims.attention_type != "abs":
            per_head += d * dk + 2 * dk  # linear_pos rows, pos_bias_u/v rows
        return per_head, d + norm  # linear_out bias
    if name == "conv":
        # pointwise_conv1: 2 rows + 2 biases; depthwise: k + 1; BatchNorm: 2; pointwise_conv2: d
        return 2 * (d + 1) + (k + 1) + 2 + d, d + norm
    raise KeyError(name)


def _module_macs(dims: ConformerDims, name: str, t: int) -> int:
    """MACs per kept unit of a module at ``t`` frames after subsampling."""
    d, dk, k = dims.output_size, dims.d_k, dims.cnn_module_kernel
    if name in ("ffn1", "ffn2"):
        return 2 * d * t
    if name == "mha":
        macs = 4 * d * dk * t + 2 * t * t * dk  # q/k/v/out projections, scores, context
        if dims.attention_type != "abs":
            t_pos = 2 * t - 1 if dims.attention_type == "rel" else t
            macs += d * dk * t_pos + t * t_pos * dk  # linear_pos, position scores
        return macs
    if name == "conv":
        return (2 * d + k + d) * t
    raise KeyError(name)


#: Cost kinds that a pruning target can name, per scope (DESIGN 2.2).
BLOCK_COST_KINDS = ("block_params", "block_macs")


def module_unit_cost(dims: ConformerDims, name: str, kind: str, t: int) -> Tuple[int, int]:
    """(cost of one kept unit, cost present with the module whatever its size) of
    module ``name`` in cost ``kind`` (:data:`BLOCK_COST_KINDS`), at ``t`` frames
    after subsampling (MACs only)."""
    if kind == "block_params":
        return _module_params(dims, name)
    if kind == "block_macs":
        return _module_macs(dims, name, t), 0
    raise ValueError(f"unknown cost kind {kind!r}; choose from {list(BLOCK_COST_KINDS)}")


def block_constant_cost(dims: ConformerDims, kind: str) -> int:
    """Cost of a block that no gate can remove (``norm_final``'s params)."""
    if kind == "block_params":
        return 2 * dims.output_size if dims.use_cnn_module else 0
    if kind == "block_macs":
        return 0
    raise ValueError(f"unknown cost kind {kind!r}; choose from {list(BLOCK_COST_KINDS)}")


def frames_after_frontend(dims: ConformerDims, seconds: float, frames_per_second: float) -> int:
    """Frames entering the blocks for ``seconds`` of audio."""
    return frontend_cost(dims, int(round(seconds * frames_per_second)))[2]


def block_params(dims: ConformerDims, counts: Mapping[str, ModuleCounts]) -> Number:
    """Parameters of one block (modules, their norms, and ``norm_final``)."""
    total: Number = 2 * dims.output_size if dims.use_cnn_module else 0
    for name in MODULES:
        per_unit, fixed = _module_params(dims, name)
        c = counts[name]
        total = total + per_unit * c.units + fixed * c.present
    return total


def block_macs(dims: ConformerDims, counts: Mapping[str, ModuleCounts], t: int) -> Number:
    """MACs of one block at ``t`` frames after subsampling."""
    total: Number = 0
    for name in MODULES:
        total = total + _module_macs(dims, name, t) * counts[name].units
    return total


# ----------------------------------------------------------------------------
# Front end (subsampling) and whole encoder
# ----------------------------------------------------------------------------


def frontend_cost(dims: ConformerDims, t_in: int) -> Tuple[int, int, int]:
    """(params, MACs, output frames) of the subsampling front end at ``t_in`` frames."""
    d, f = dims.output_size, dims.input_size
    params = 1 if dims.scaled_pos_enc else 0
    if dims.input_layer == "linear":
        return params + f * d + d + 2 * d, t_in * f * d, t_in
    convs = _SUBSAMPLING_CONVS.get(dims.input_layer)
    if convs is None:
        raise ValueError(f"no cost model for input_layer={dims.input_layer!r}")
    channels = dims.subsampling_channels or (d,) * len(convs)  # kept output channels per Conv2d
    macs, t, c_in = 0, t_in, 1
    for (kernel, stride), c in zip(convs, channels):
        t = (t - kernel) // stride + 1
        f = (f - kernel) // stride + 1
        params += c_in * c * kernel * kernel + c
        macs += max(t, 0) * f * c * c_in * kernel * kernel
        c_in = c
    params += d * f * c_in + d  # output projection
    macs += max(t, 0) * d * f * c_in
    return params, macs, max(t, 0)


def encoder_cost(
    dims: ConformerDims,
    blocks: Sequence[Mapping[str, ModuleCounts]],
    seconds: float = 10.0,
    frames_per_second: float = 100.0,
) -> Dict[str, Number]:
    """Encoder cost of per-block counts.

    Returns ``params`` (whole encoder), ``block_params`` (the prunable blocks),
    ``macs`` (whole encoder at ``seconds`` of audio) and ``block_macs``.
    """
    t_in = int(round(seconds * frames_per_second))
    fe_params, fe_macs, t = frontend_cost(dims, t_in)
    b_params: Number = 0
    b_macs: Number = 0
    for counts in blocks:
        b_params = b_params + block_params(dims, counts)
        b_macs = b_macs + block_macs(dims, counts, t)
    after_norm = 2 * dims.output_size if dims.normalize_before else 0
    return {
        "params": fe_params + b_params + after_norm,
        "block_params": b_params,
        "macs": fe_macs + b_macs,
        "block_macs": b_macs,
    }


def structure_cost(
    dims: ConformerDims,
    structure: Sequence[BlockStructure],
    seconds: float = 10.0,
    frames_per_second: float = 100.0,
) -> Dict[str, int]:
    """Exact encoder cost of a structure (see :func:`encoder_cost`)."""
    return encoder_cost(
        dims, [counts_from_structure(b) for b in structure], seconds, frames_per_second
    )


def sparsity(pruned: Number, dense: Number) -> Number:
    """``1 - pruned / dense``."""
    return 1.0 - pruned / dense


# --------------------------------------------------------------------------- decoder


@dataclass
class DecoderLayerCounts:
    """Kept units and presence of each sublayer of one layer (ints, or probabilities).

    ``*_present`` is 1 when the sublayer exists (0/1, or a probability for expected costs).
    """

    self_heads: Number
    src_heads: Number
    ffn_units: Number
    self_present: Number
    src_present: Number
    ffn_present: Number

    @classmethod
    def from_structure(cls, s: DecoderLayerStructure) -> "DecoderLayerCounts":
        return cls(s.self_heads, s.src_heads, s.ffn_units,
                   int(s.self_heads > 0), int(s.src_heads > 0), int(s.ffn_units > 0))


def _attention_params(dims: DecoderDims) -> Tuple[int, int]:
    """(params per kept head, params present with the sublayer) of one attention sublayer."""
    d, dk = dims.attention_dim, dims.d_k
    per_head = 3 * (d * dk + dk) + dk * d  # q/k/v rows + biases, linear_out columns
    fixed = d + 2 * d  # linear_out bias, the sublayer's LayerNorm
    if dims.qk_norm:
        fixed += 4 * dk  # q_norm and k_norm (LayerNorm(d_k) each)
    if dims.concat_after:
        fixed += 2 * d * d + d  # concat_linear
    return per_head, fixed


def decoder_global_params(dims: DecoderDims) -> int:
    """Parameters outside the layers: input layer, positional scale, after_norm, output layer."""
    d, v = dims.attention_dim, dims.vocab_size
    if dims.input_layer == "embed":
        p = v * d
    elif dims.input_layer == "linear":
        p = v * d + d + 2 * d  # Linear + LayerNorm
    else:
        raise ValueError(f"decoder_conf.input_layer: no cost model for {dims.input_layer!r}")
    p += 1 if dims.scaled_pos_enc else 0
    p += 2 * d if dims.normalize_before else 0
    p += d * v + v if dims.use_output_layer else 0
    return p


def decoder_layer_params(dims: DecoderDims, c: DecoderLayerCounts) -> Number:
    """Parameters of one decoder layer."""
    d = dims.attention_dim
    per_head, fixed = _attention_params(dims)
    ffn_per_unit, ffn_fixed = 2 * d + 1, d + 2 * d  # w_1 row+bias, w_2 column | w_2 bias, norm3
    return (per_head * c.self_heads + fixed * c.self_present
            + per_head * c.src_heads + fixed * c.src_present
            + ffn_per_unit * c.ffn_units + ffn_fixed * c.ffn_present)


def decoder_layer_token_macs(
    dims: DecoderDims, c: DecoderLayerCounts, prefix_len: int, memory_frames: int
) -> Number:
    """MACs of one layer for one new token of one hypothesis (memory K/V excluded).

    Self-attention: q/k/v/out projections of the new token and attention over
    ``prefix_len`` positions (the new token included); source attention: q/out projections
    and attention over ``memory_frames`` encoder frames; FFN: both projections.
    """
    d, dk = dims.attention_dim, dims.d_k
    concat = 2 * d * d if dims.concat_after else 0
    return ((4 * d * dk + 2 * dk * prefix_len) * c.self_heads + concat * c.self_present
            + (2 * d * dk + 2 * dk * memory_frames) * c.src_heads + concat * c.src_present
            + 2 * d * c.ffn_units)


def decoder_layer_memory_macs(dims: DecoderDims, c: DecoderLayerCounts, memory_frames: int) -> Number:
    """MACs of the source-attention key and value projections of one utterance's memory."""
    return 2 * memory_frames * dims.attention_dim * dims.d_k * c.src_heads


def decoder_cost(
    dims: DecoderDims,
    layers: Sequence[Union[DecoderLayerStructure, DecoderLayerCounts]],
    prefix_len: int = 20,
    memory_frames: int = 250,
    tokens: Optional[int] = None,
) -> Dict[str, Number]:
    """Exact parameters and MACs of a decoder structure, as :class:`PrunedTransformerDecoder` runs.

    MAC convention (matrix products only: embedding look-ups, positional encodings, norms,
    activations, softmax and biases are not counted):

    * ``token_macs``: one decoding step of one hypothesis at prefix length ``prefix_len``
      (the new token attends to ``prefix_len`` positions, itself included) against a
      memory of ``memory_frames`` encoder frames: per layer
      :func:`decoder_layer_token_macs`, plus the output layer (d x V) and, for
      ``input_layer: linear``, the input projection of the new token (V x d);
    * ``memory_macs``: the source-attention key/value projections of the memory, done once
      per utterance and shared by all hypotheses and steps (not in ``token_macs``);
    * ``utterance_macs`` (with ``tokens``): one hypothesis decoded for ``tokens`` steps,
      ``memory_macs + sum(token_macs at prefix 1..tokens)`` (a beam of B costs
      ``memory_macs + B * (utterance_macs - memory_macs)``).

    Args:
        dims: dense dimensions.
        layers: one entry per dense layer (``num_blocks``), structures or counts (use
            counts with probabilities for expected, differentiable costs).
        prefix_len, memory_frames: reference lengths (tokens, encoder output frames).
        tokens: decoded tokens for ``utterance_macs``.
    Returns:
        ``params`` (whole decoder), ``layer_params``, ``token_macs``, ``memory_macs`` and,
        with ``tokens``, ``utterance_macs``.
    """
    if len(layers) != dims.num_blocks:
        raise ValueError(f"{len(layers)} layer structures for num_blocks={dims.num_blocks}")
    counts = [x if isinstance(x, DecoderLayerCounts) else DecoderLayerCounts.from_structure(x)
              for x in layers]
    d, v = dims.attention_dim, dims.vocab_size
    step_fixed = (d * v if dims.use_output_layer else 0) + (v * d if dims.input_layer == "linear" else 0)

    def token_macs(length: int) -> Number:
        total: Number = step_fixed
        for c in counts:
            total = total + decoder_layer_token_macs(dims, c, length, memory_frames)
        return total

    layer_params: Number = 0
    memory_macs: Number = 0
    for c in counts:
        layer_params = layer_params + decoder_layer_params(dims, c)
        memory_macs = memory_macs + decoder_layer_memory_macs(dims, c, memory_frames)
    out: Dict[str, Number] = {
        "params": layer_params + decoder_global_params(dims),
        "layer_params": layer_params,
        "token_macs": token_macs(prefix_len),
        "memory_macs": memory_macs,
    }
    if tokens is not None:
        total = memory_macs
        for length in range(1, tokens + 1):
            total = total + token_macs(length)
        out["utterance_macs"] = total
    return out
