"""Exact and expected cost (parameters, MACs) of a Conformer encoder structure.

Every function takes, per block and module, a :class:`ModuleCounts`: the kept
units and whether the module is present. With integers (from a
:class:`~espnet_prune.structure.BlockStructure`) the result is the exact count
of the shrunk model; with gate probabilities (tensors) it is the differentiable
expected cost that pruning training drives to its target (DESIGN 2.2).

MACs count multiply-accumulates of matrix products and convolutions (biases,
norms, activations and softmax are not counted), for the encoder only
(subsampling front end + blocks), at ``seconds`` of audio with
``frames_per_second`` feature frames (100 for a 10 ms hop).

"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Sequence, Tuple

from espnet_prune.cost.metrics import Number, check_metric
from espnet_prune.cost.subsampling import SUBSAMPLING_CONVS, subsampling_cost
from espnet_prune.structure import MODULES, BlockStructure, ConformerDims



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


def module_unit_cost(dims: ConformerDims, name: str, metric: str, t: int) -> Tuple[int, int]:
    """(cost of one kept unit, cost present with the module whatever its size) of
    module ``name`` in ``metric`` (``params``, or ``macs`` at ``t`` frames after
    subsampling)."""
    if check_metric(metric) == "params":
        return _module_params(dims, name)
    return _module_macs(dims, name, t), 0


def block_constant_cost(dims: ConformerDims, metric: str) -> int:
    """Cost of a block that no gate can remove (``norm_final``'s params)."""
    if check_metric(metric) == "params":
        return 2 * dims.output_size if dims.use_cnn_module else 0
    return 0


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
    """(params, MACs, output frames) of the subsampling front end at ``t_in`` frames
    (:func:`~espnet_prune.cost.subsampling.subsampling_cost` for the conv front ends)."""
    d, f = dims.output_size, dims.input_size
    if dims.input_layer == "linear":
        return (1 if dims.scaled_pos_enc else 0) + f * d + d + 2 * d, t_in * f * d, t_in
    if dims.input_layer not in SUBSAMPLING_CONVS:
        raise ValueError(f"no cost model for input_layer={dims.input_layer!r}")
    n = len(SUBSAMPLING_CONVS[dims.input_layer])
    channels = dims.subsampling_channels or (d,) * n  # kept output channels per Conv2d
    return subsampling_cost(dims.input_layer, f, d, channels, t_in, dims.scaled_pos_enc)


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
