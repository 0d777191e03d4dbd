"""Exact and expected cost (parameters, MACs) of a Transformer decoder structure.

:func:`decoder_cost` gives the exact parameters and MACs of a decoder structure as
:class:`~espnet_prune.pruned_decoder.PrunedTransformerDecoder` runs it (see its docstring
for the MAC convention); :class:`DecoderLayerCounts` takes probabilities for expected
costs, and :func:`sublayer_costs` reads off the per-unit costs that the gated decoder's
part of the exact-target rule uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from espnet_prune.cost.metrics import Number, check_metric
from espnet_prune.structure import SUBLAYERS, DecoderDims, DecoderLayerStructure

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


def _check_context(metric: str, ctx: Any) -> None:
    if check_metric(metric) == "macs":
        if ctx.memory_frames is None:
            raise ValueError("the decoder's MACs need CostContext.memory_frames "
                             "(targets.build_selector sets it from the encoder)")
        if int(ctx.tokens) < 1:
            raise ValueError(f"the decoder's MACs need cost_tokens >= 1, got {ctx.tokens}")


def decoder_fixed_cost(dims: DecoderDims, metric: str, ctx: Any) -> Number:
    """The decoder's cost in ``metric`` that no sublayer carries: the input and output
    layers and ``after_norm`` (params), the per-token output-layer MACs (``macs``, as
    ``utterance_macs`` for ``ctx.tokens`` steps against ``ctx.memory_frames`` frames)."""
    _check_context(metric, ctx)
    empty = [DecoderLayerStructure(0, 0, 0)] * dims.num_blocks
    key = "params" if metric == "params" else "utterance_macs"
    return decoder_cost(dims, empty, memory_frames=int(ctx.memory_frames or 0), tokens=int(ctx.tokens))[key]


def sublayer_costs(dims: DecoderDims, metric: str, ctx: Any) -> Dict[str, Tuple[float, float]]:
    """Per sublayer name, ``(cost of one kept unit, cost present with the sublayer)``.

    Read off this cost model (one layer, affine in the kept counts):

    * ``params`` from :func:`decoder_layer_params` (per head: q/k/v rows and biases,
      ``linear_out`` columns; per sublayer: closing bias, LayerNorm, q/k norms with
      ``qk_norm``);
    * ``macs``: the layer's share of ``utterance_macs`` (memory keys/values once, then
      ``ctx.tokens`` steps at prefix lengths 1..tokens against ``ctx.memory_frames`` frames).
    """
    _check_context(metric, ctx)
    t_mem, tokens = int(ctx.memory_frames or 0), int(ctx.tokens)

    def layer_cost(c: DecoderLayerCounts) -> float:
        if metric == "params":
            return decoder_layer_params(dims, c)
        total = decoder_layer_memory_macs(dims, c, t_mem)
        for length in range(1, tokens + 1):
            total += decoder_layer_token_macs(dims, c, length, t_mem)
        return total

    zero = dict(self_heads=0, src_heads=0, ffn_units=0,
                self_present=0, src_present=0, ffn_present=0)
    base = layer_cost(DecoderLayerCounts(**zero))
    present_key = {"self_attn": "self_present", "src_attn": "src_present", "ffn": "ffn_present"}
    out = {}
    for name, (field_name, _, _, _) in SUBLAYERS.items():
        present = layer_cost(DecoderLayerCounts(**{**zero, present_key[name]: 1}))
        one = layer_cost(DecoderLayerCounts(**{**zero, present_key[name]: 1, field_name: 1}))
        out[name] = (one - present, present - base)
    return out
