"""Transformer decoder with removable heads, units and sublayers, and fast exact decoding.

ESPnet name ``pruned_transformer``. :class:`PrunedTransformerDecoder` is ESPnet's
``TransformerDecoder`` (every option of it is accepted) plus an optional
``layer_structures`` entry, one mapping per layer::

    decoder: pruned_transformer
    decoder_conf:
        attention_heads: 4        # dense sizes: d_k = attention_dim / attention_heads
        linear_units: 2048
        num_blocks: 6
        ...
        layer_structures:
        - {self_heads: 4, src_heads: 3, ffn_units: 1500}
        - {self_heads: 0, src_heads: 4, ffn_units: 700}    # no self-attention (nor norm1)
        - {self_heads: 0, src_heads: 0, ffn_units: 0}      # layer removed

Rules:

* a size of 0 removes that sublayer together with its LayerNorm (``norm1`` self-attention,
  ``norm2`` source attention, ``norm3`` FFN) and, with ``concat_after``, its
  ``concat_linear``; the residual branch is skipped;
* kept heads keep ``d_k = attention_dim / attention_heads`` (the dense value);
* a layer with all three sizes 0 is removed entirely. The remaining layers are
  renumbered ``decoders.0 .. decoders.{L'-1}`` in their original order (state-dict keys,
  ``gradient_checkpoint_layers`` and decoding states count kept layers only);
  :attr:`PrunedTransformerDecoder.kept_layers` maps each kept layer to its index in
  ``layer_structures``, and :meth:`PrunedTransformerDecoder.structure` still lists all
  ``num_blocks`` entries. A decoder whose layers are either dense or removed therefore has
  exactly the state dict of an ESPnet ``transformer`` decoder with fewer blocks.

Without ``layer_structures`` the decoder is ESPnet's dense decoder (same modules, same
state-dict keys: an ESPnet ``transformer`` checkpoint loads with every key matched).

Fast incremental decoding (used by ESPnet's ``BeamSearch`` / ``BatchBeamSearch`` through
:meth:`~PrunedTransformerDecoder.score` and :meth:`~PrunedTransformerDecoder.batch_score`):

* the source-attention keys and values of the encoder output (memory) are projected once
  per utterance and reused for every hypothesis and step (:class:`_MemoryKV`); a memory
  expanded over the beam (``x.expand(n_hyp, T, D)``, stride 0, which is what
  ``BatchBeamSearch`` passes) is projected once, not once per hypothesis, and its
  queries are scored against it with one matrix product per head;
* the self-attention keys and values of the prefix are carried in the decoding state
  (:class:`DecoderState`), so a step projects only the new token (ESPnet re-projects the
  whole prefix every step).

The memory cache is keyed on the memory's storage (held by a weak reference: the cache
never outlives the tensor, and a new tensor allocated at the same address is a different
storage), its view geometry, its in-place version counter and the projection weights;
``init_state`` (called by ESPnet at the start of every utterance) clears it. Under
autograd (grad enabled) nothing is cached. Tensors created under ``torch.inference_mode``
have no version counter: an in-place change of such a memory between two calls without an
``init_state`` in between is not seen (ESPnet's search never does that).

:meth:`~PrunedTransformerDecoder.forward_one_step` keeps ESPnet's cache semantics
(one ``(batch, t-1, d)`` layer output per layer) and uses the cached memory keys and
values too. If the installed ESPnet's own ``TransformerDecoder`` already projects the
memory once (probed by behaviour, :func:`espnet_caches_memory_kv`), a dense decoder made of
ESPnet's layers uses ESPnet's implementation instead of ours.

Costs: :func:`decoder_cost` gives exact parameters and MACs of a structure (see its
docstring for the MAC convention); :func:`slice_decoder_layer` cuts a dense layer down to
chosen heads / units, folding optional per-unit and per-sublayer scales into the output
projections (what a gated decoder shrinks through).
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention
from espnet.nets.pytorch_backend.transformer.decoder_layer import DecoderLayer
from espnet.nets.pytorch_backend.transformer.embedding import (
    PositionalEncoding,
    ScaledPositionalEncoding,
)
from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import (
    PositionwiseFeedForward,
)
from espnet.nets.pytorch_backend.transformer.repeat import MultiSequential
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder

from espnet_prune.blocks import subset_attention, subset_ffn
from espnet_prune.options import inherit_signature
from espnet_prune.structure import KeptSizes

Tensor = torch.Tensor
Number = Union[int, float, Tensor]

#: Sublayers of a decoder layer: name -> (structure field, attribute, norm, concat linear).
SUBLAYERS: Dict[str, Tuple[str, str, str, Optional[str]]] = {
    "self_attn": ("self_heads", "self_attn", "norm1", "concat_linear1"),
    "src_attn": ("src_heads", "src_attn", "norm2", "concat_linear2"),
    "ffn": ("ffn_units", "feed_forward", "norm3", None),
}

_TRANSFORMER_PARAMS = set(inspect.signature(TransformerDecoder.__init__).parameters) - {"self"}


# =============================================================================
# Structure
# =============================================================================


@dataclass(frozen=True)
class DecoderDims:
    """Dense Transformer decoder dimensions (what the cost model needs).

    Attributes:
        vocab_size: output tokens V.
        attention_dim: model dimension d (ESPnet's ``encoder_output_size``).
        attention_heads: dense heads h of both attentions (d_k = d / h).
        linear_units: dense FFN hidden units.
        num_blocks: dense number of layers.
        input_layer: ``embed`` (token ids) or ``linear`` (V-dim vectors).
        use_output_layer: whether the decoder ends with the d x V projection.
        normalize_before: pre-norm layers (and ``after_norm``).
        concat_after: ``x + linear(concat(x, att(x)))`` attention sublayers.
        qk_norm: per-head LayerNorm of queries and keys.
        scaled_pos_enc: ``ScaledPositionalEncoding`` (one learnable scale).
    """

    vocab_size: int
    attention_dim: int
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 6
    input_layer: str = "embed"
    use_output_layer: bool = True
    normalize_before: bool = True
    concat_after: bool = False
    qk_norm: bool = False
    scaled_pos_enc: bool = False

    @property
    def d_k(self) -> int:
        return self.attention_dim // self.attention_heads

    def dense_layer(self) -> "DecoderLayerStructure":
        return DecoderLayerStructure(self.attention_heads, self.attention_heads, self.linear_units)

    def dense_structure(self) -> List["DecoderLayerStructure"]:
        return [self.dense_layer() for _ in range(self.num_blocks)]

    @classmethod
    def from_decoder_conf(
        cls, vocab_size: int, encoder_output_size: int, conf: Mapping[str, Any]
    ) -> "DecoderDims":
        """Dims from ESPnet ``decoder_conf`` options (``transformer`` / ``pruned_transformer``)."""
        defaults = {
            name: p.default
            for name, p in inspect.signature(TransformerDecoder.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        c = {**defaults, **{k: v for k, v in conf.items() if k != "layer_structures"}}
        pos = c.get("pos_enc_class", PositionalEncoding)
        return cls(
            vocab_size=int(vocab_size),
            attention_dim=int(encoder_output_size),
            attention_heads=int(c["attention_heads"]),
            linear_units=int(c["linear_units"]),
            num_blocks=int(c["num_blocks"]),
            input_layer=str(c["input_layer"]),
            use_output_layer=bool(c["use_output_layer"]),
            normalize_before=bool(c["normalize_before"]),
            concat_after=bool(c["concat_after"]),
            qk_norm=bool(c.get("qk_norm", False)),
            scaled_pos_enc=isinstance(pos, type) and issubclass(pos, ScaledPositionalEncoding),
        )


@dataclass(frozen=True)
class DecoderLayerStructure(KeptSizes):
    """Units kept in one decoder layer; 0 removes the sublayer (all 0: the layer).

    Attributes:
        self_heads: self-attention heads kept.
        src_heads: source-attention heads kept.
        ffn_units: FFN hidden units kept.
    """

    self_heads: int
    src_heads: int
    ffn_units: int

    def units(self, sublayer: str) -> int:
        """Kept units of a sublayer named as in :data:`SUBLAYERS`."""
        return getattr(self, SUBLAYERS[sublayer][0])

    @property
    def removed(self) -> bool:
        """True when nothing is left: the layer is dropped from the decoder."""
        return self.self_heads == 0 and self.src_heads == 0 and self.ffn_units == 0

    def check_fits(self, dims: DecoderDims, where: str = "layer") -> None:
        """Raise if this structure is larger than the dense layer."""
        self.check_within(dims.dense_layer(), where)


def decoder_structures_from_conf(
    layers: Sequence[Mapping[str, Any]], dims: DecoderDims
) -> List[DecoderLayerStructure]:
    """Parse ``decoder_conf.layer_structures`` and check it against ``dims``."""
    if isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Sequence):
        raise ValueError("decoder_conf.layer_structures: expected a list with one "
                         f"{{self_heads, src_heads, ffn_units}} mapping per layer, got {layers!r}")
    if len(layers) != dims.num_blocks:
        raise ValueError(
            f"decoder_conf.layer_structures has {len(layers)} entries but num_blocks is "
            f"{dims.num_blocks}"
        )
    out = []
    for i, layer in enumerate(layers):
        where = f"decoder_conf.layer_structures[{i}]"
        s = DecoderLayerStructure.from_dict(layer, where=where)
        s.check_fits(dims, where=where)
        out.append(s)
    return out


# =============================================================================
# Layers with removable sublayers, and slicing
# =============================================================================


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
            new = cls(layer.size, _copy_attention(layer.self_attn),
                      _copy_attention(layer.src_attn), copy.deepcopy(layer.feed_forward),
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
        if cache is None:
            xq, q_mask = tgt, tgt_mask
        else:
            xq = tgt[:, -1:, :]
            q_mask = tgt_mask[:, -1:, :] if tgt_mask is not None else None
        if self.self_attn is not None and cache is not None:
            h_full = self.norm1(tgt) if self.normalize_before else tgt

            def self_fn(h: Tensor) -> Tensor:
                return self.self_attn(h, h_full, h_full, q_mask)
        else:

            def self_fn(h: Tensor) -> Tensor:
                return self.self_attn(h, h, h, q_mask)

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


def _copy_attention(att: Optional[torch.nn.Module]) -> Optional[torch.nn.Module]:
    """Deep copy of an attention module without the attention weights ESPnet keeps in
    ``attn`` (a non-leaf tensor after a forward under autograd cannot be deep-copied)."""
    if att is None:
        return None
    kept = getattr(att, "attn", None)
    memo = {id(kept): None} if isinstance(kept, torch.Tensor) else {}
    return copy.deepcopy(att, memo)


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
            out = _apply(module.w_2, module.activation(_apply(module.w_1, h)))
        else:
            out = module(h)
        if layer.concat_after and concat_name is not None:
            x = x + _apply(getattr(layer, concat_name), torch.cat((h, out), dim=-1))
        else:
            x = x + _dropout(layer.dropout, out)
        if not layer.normalize_before:
            x = norm(x)
    return x


def _unit_count(module: torch.nn.Module) -> int:
    if isinstance(module, MultiHeadedAttention):
        return module.h
    if isinstance(module, PositionwiseFeedForward):
        return module.w_1.out_features
    raise TypeError(f"cannot prune a {type(module).__name__} in a decoder layer")


def decoder_layer_structure(layer: DecoderLayer) -> DecoderLayerStructure:
    """Kept units of each sublayer of an (ESPnet or pruned) decoder layer."""
    sizes = {}
    for field_name, attr, _, _ in SUBLAYERS.values():
        module = getattr(layer, attr)
        sizes[field_name] = 0 if module is None else _unit_count(module)
    return DecoderLayerStructure(**sizes)


def remove_sublayer(layer: DecoderLayer, name: str) -> None:
    """In place: drop sublayer ``name`` with its norm (and concat linear)."""
    _, attr, norm, concat = SUBLAYERS[name]
    setattr(layer, attr, None)
    for sub in (norm, concat):
        if sub is not None and sub in layer._modules:
            del layer._modules[sub]


def _scaled_linear(linear: torch.nn.Linear, scale: Tensor) -> torch.nn.Linear:
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
        n = _unit_count(module)
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
            setattr(new, concat, _scaled_linear(getattr(new, concat), out_scale))
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


# =============================================================================
# Cost model
# =============================================================================


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


# =============================================================================
# Memory key/value cache
# =============================================================================


def _version(t: Tensor) -> Optional[int]:
    """In-place version counter of ``t`` (None for inference tensors, which have none)."""
    try:
        return t._version
    except RuntimeError:
        return None


class _MemoryKV:
    """Source-attention keys and values of one memory, for every layer.

    ``kv[i]`` is ``(K, V)`` of layer ``i``, each ``(U, heads_i, T, d_k)`` (``None`` for
    layers without source attention); ``U`` is the number of distinct memory rows.
    """

    __slots__ = ("storage_ref", "key", "kv", "__weakref__")

    def __init__(self, storage_ref, key, kv):
        self.storage_ref = storage_ref
        self.key = key
        self.kv = kv


def _split_heads(x: Tensor, heads: int, d_k: int) -> Tensor:
    """``(B, n, heads*d_k)`` -> ``(B, heads, n, d_k)``."""
    return x.view(x.size(0), x.size(1), heads, d_k).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """``(B, heads, n, d_k)`` -> ``(B, n, heads*d_k)``."""
    b, h, n, dk = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dk)


def _plain_linear(module: torch.nn.Module) -> bool:
    """A plain ``nn.Linear`` without hooks (safe to apply as ``F.linear`` on its weights)."""
    return (type(module) is torch.nn.Linear and not module._forward_hooks
            and not module._forward_pre_hooks)


def _apply(module: torch.nn.Module, x: Tensor) -> Tensor:
    """``module(x)``, without the module-call overhead for plain linears."""
    if _plain_linear(module):
        return torch.nn.functional.linear(x, module.weight, module.bias)
    return module(x)


def _dropout(module: torch.nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` for a dropout module, skipped (identity) in eval mode."""
    return module(x) if module.training else x


def _fused_qkv(att: MultiHeadedAttention) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
    """Concatenated q/k/v weight ``(3*H*d_k, d)`` and bias of ``att``, cached on the module.

    None when the projections are not plain linears or autograd is on. The cache is keyed
    on the weights' storage and in-place versions, so changed weights are re-read.
    """
    lins = (att.linear_q, att.linear_k, att.linear_v)
    if torch.is_grad_enabled() or not all(_plain_linear(m) for m in lins):
        return None
    params = [p for m in lins for p in (m.weight, m.bias) if p is not None]
    key = tuple((p.data_ptr(), _version(p), p.dtype, p.device) for p in params)
    cached = att.__dict__.get("_espnet_prune_qkv")
    if cached is None or cached[0] != key:
        weight = torch.cat([m.weight for m in lins], dim=0)
        bias = None
        if all(m.bias is not None for m in lins):
            bias = torch.cat([m.bias for m in lins], dim=0)
        elif any(m.bias is not None for m in lins):
            return None
        cached = (key, weight, bias)
        att.__dict__["_espnet_prune_qkv"] = cached
    return cached[1], cached[2]


def _masked_softmax(scores: Tensor, masked: Optional[Tensor]) -> Tensor:
    """ESPnet's masking: masked scores to the dtype minimum, softmax, masked weights to 0."""
    if masked is None:
        return torch.softmax(scores, dim=-1)
    scores = scores.masked_fill(masked, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1).masked_fill(masked, 0.0)


@functools.lru_cache(maxsize=None)
def espnet_caches_memory_kv() -> bool:
    """Whether the installed ESPnet ``TransformerDecoder`` projects the memory once.

    Probed by behaviour on a tiny decoder (two ``batch_score`` calls on the same memory,
    counting the source-attention key projections), not by version string. The global
    random state is left untouched.
    """
    try:
        with torch.random.fork_rng(devices=[]):
            dec = TransformerDecoder(5, 4, attention_heads=1, linear_units=4, num_blocks=1).eval()
            calls: List[int] = []
            handle = dec.decoders[0].src_attn.linear_k.register_forward_hook(
                lambda *_: calls.append(1))
            try:
                memory = torch.randn(2, 3, 4)
                ys = torch.zeros(2, 1, dtype=torch.long)
                with torch.no_grad():
                    _, states = dec.batch_score(ys, [None, None], memory)
                    dec.batch_score(torch.cat([ys, ys], 1), states, memory)
            finally:
                handle.remove()
        return len(calls) == 1
    except Exception:  # noqa: BLE001 - any failure means: use our implementation
        return False


class DecoderState(NamedTuple):
    """Decoding state of one hypothesis in :meth:`PrunedTransformerDecoder.score` / ``batch_score``.

    The hypotheses scored together share one ``kv`` (time-major, so that the next step
    gathers the surviving hypotheses and appends the new position without re-stacking);
    each state names its row.

    Attributes:
        length: prefix length t the state covers.
        kv: per kept layer, the self-attention ``(K, V)`` of the prefix of every
            hypothesis of the batch, each ``(t, batch, heads, d_k)``; ``None`` for layers
            without self-attention.
        row: this hypothesis' index in the batch dimension of ``kv``.
    """

    length: int
    kv: Tuple[Optional[Tuple[Tensor, Tensor]], ...]
    row: int = 0


# =============================================================================
# Decoder
# =============================================================================


@inherit_signature(TransformerDecoder)
class PrunedTransformerDecoder(TransformerDecoder):
    """ESPnet ``TransformerDecoder`` with per-layer sizes and fast exact decoding.

    Args:
        vocab_size: output tokens V.
        encoder_output_size: attention dimension d.
        layer_structures: optional, one ``{self_heads, src_heads, ffn_units}`` mapping per
            layer (``num_blocks`` entries; see the module docstring for removal rules).
        **transformer_kwargs: every ``TransformerDecoder`` option (``attention_heads``,
            ``linear_units``, ``num_blocks``, ``normalize_before``, ``concat_after`` ...),
            the dense sizes.

    Attributes:
        dims: :class:`DecoderDims` of the dense decoder.
        kept_layers: index in ``layer_structures`` of each entry of ``decoders``.
    """

    #: use ESPnet's own decoding when it caches the memory itself (dense layers only)
    prefer_espnet_memory_cache: bool = True
    #: False: ESPnet's incremental algorithm (memory and prefix re-projected at every step)
    #: on these layers, for comparisons; see :func:`espnet_decoding`
    use_fast_decoding: bool = True

    def __init__(
        self,
        vocab_size: int,
        encoder_output_size: int,
        layer_structures: Optional[Sequence[Mapping[str, Any]]] = None,
        **transformer_kwargs: Any,
    ) -> None:
        unknown = sorted(set(transformer_kwargs) - _TRANSFORMER_PARAMS)
        if unknown:
            raise ValueError(f"decoder_conf: unknown option(s) {unknown} for pruned_transformer")
        super().__init__(vocab_size, encoder_output_size, **transformer_kwargs)
        self.dims = DecoderDims.from_decoder_conf(vocab_size, encoder_output_size, transformer_kwargs)
        self._memory_kv_cache: Optional[_MemoryKV] = None
        self._espnet_path: Optional[bool] = None
        if layer_structures is None:
            self.layer_structures: Optional[List[DecoderLayerStructure]] = None
            self.kept_layers = list(range(len(self.decoders)))
            return
        self.layer_structures = decoder_structures_from_conf(layer_structures, self.dims)
        if self.dims.attention_dim % self.dims.attention_heads:
            raise ValueError("decoder_conf.attention_heads must divide the attention dimension")
        kept, layers = [], []
        for i, (layer, s) in enumerate(zip(self.decoders, self.layer_structures)):
            if s.removed:
                continue
            kept.append(i)
            layers.append(resize_decoder_layer(layer, s))
        self.decoders = MultiSequential(*layers, layer_drop_rate=self.decoders.layer_drop_rate)
        self.kept_layers = kept

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_transformer_decoder(cls, decoder: TransformerDecoder) -> "PrunedTransformerDecoder":
        """Fast-decoding copy of a built dense ESPnet ``TransformerDecoder``.

        The options are read from the modules, a new decoder is built with them, and the
        state dict is loaded with every key checked (strict); device, dtype and train/eval
        mode are copied.
        """
        if isinstance(decoder, PrunedTransformerDecoder):
            return decoder
        if type(decoder) is not TransformerDecoder:
            raise TypeError(
                f"fast decoding needs an ESPnet 'transformer' decoder (TransformerDecoder), "
                f"got {type(decoder).__name__}"
            )
        kwargs = transformer_options(decoder)
        vocab, dim = kwargs.pop("vocab_size"), kwargs.pop("encoder_output_size")
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten below
            new = cls(vocab, dim, **kwargs)
        param = next(decoder.parameters())
        new.to(device=param.device, dtype=param.dtype)
        state = decoder.state_dict()
        result = new.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                "the decoder's state dict does not match a pruned_transformer built with its "
                f"options: missing {result.missing_keys[:5]}, unexpected "
                f"{result.unexpected_keys[:5]} (a quantized or modified decoder?)"
            )
        return new.train(decoder.training)

    def structure(self) -> List[DecoderLayerStructure]:
        """One structure per dense layer (removed layers as zeros)."""
        if self.layer_structures is not None:
            return list(self.layer_structures)
        return [decoder_layer_structure(layer) for layer in self.decoders]

    def cost(self, prefix_len: int = 20, memory_frames: int = 250,
             tokens: Optional[int] = None) -> Dict[str, Number]:
        """:func:`decoder_cost` of this decoder."""
        return decoder_cost(self.dims, self.structure(), prefix_len, memory_frames, tokens)

    def __getstate__(self) -> Dict[str, Any]:
        # the memory cache holds a weak reference: never pickled or deep-copied
        state = self.__dict__.copy()
        state["_memory_kv_cache"] = None
        return state

    # ------------------------------------------------------------------ memory K/V

    def clear_memory_cache(self) -> None:
        """Forget the cached memory keys and values."""
        self._memory_kv_cache = None

    def _memory_rows(self, xs: Tensor, n_hyps: int) -> Tuple[Tensor, int]:
        """Distinct memory rows for ``n_hyps`` hypotheses and the hypotheses per row.

        ``xs`` is ``(B, T, d)`` with ``B == n_hyps`` (one row per hypothesis; a stride-0
        expansion counts as one row), or ``B`` dividing ``n_hyps`` (hypothesis
        ``u * g + j`` uses row ``u``).
        """
        if xs.dim() != 3:
            raise ValueError(f"memory must be (batch, frames, dim), got shape {tuple(xs.shape)}")
        n = xs.size(0)
        if n == 0 or n_hyps % n:
            raise ValueError(f"memory with {n} rows for {n_hyps} hypotheses")
        if n > 1 and xs.stride(0) == 0:
            xs = xs[:1]
        return xs, n_hyps // xs.size(0)

    def _weights_key(self) -> Tuple:
        key = []
        for layer in self.decoders:
            att = layer.src_attn
            if att is None:
                continue
            for mod in (att.linear_k, att.linear_v, att.k_norm):
                for p in mod.parameters(recurse=False):
                    key.append((p.data_ptr(), _version(p), p.dtype))
        return tuple(key)

    def _project_memory(self, rows: Tensor) -> List[Optional[Tuple[Tensor, Tensor]]]:
        out: List[Optional[Tuple[Tensor, Tensor]]] = []
        for layer in self.decoders:
            att = layer.src_attn
            if att is None:
                out.append(None)
                continue
            k = att.k_norm(_split_heads(att.linear_k(rows), att.h, att.d_k))
            v = _split_heads(att.linear_v(rows), att.h, att.d_k)
            out.append((k, v))
        return out

    def memory_kv(self, rows: Tensor) -> List[Optional[Tuple[Tensor, Tensor]]]:
        """Per layer ``(K, V)`` ``(U, heads, T, d_k)`` of memory rows ``(U, T, d)``, cached.

        Cached (one memory at a time) unless grad is enabled; see the module docstring
        for the cache key.
        """
        if torch.is_grad_enabled():
            return self._project_memory(rows)
        try:
            storage = rows.untyped_storage()
        except Exception:  # noqa: BLE001 - tensors without storage: no caching
            return self._project_memory(rows)
        shape, stride = tuple(rows.shape), tuple(rows.stride())
        if shape[0] == 1:
            stride = stride[1:]  # a row of an expansion and an unsqueezed row are the same
        key = (rows.storage_offset(), shape, stride, rows.dtype, rows.device, _version(rows),
               self._weights_key())
        entry = self._memory_kv_cache
        if entry is not None and entry.key == key and entry.storage_ref() is storage:
            return entry.kv
        kv = self._project_memory(rows)
        self_ref = weakref.ref(self)
        entry_ref: List[Any] = []

        def forget(_ref: Any) -> None:
            dec = self_ref()
            if dec is not None and entry_ref and dec.__dict__.get("_memory_kv_cache") is entry_ref[0]():
                dec.__dict__["_memory_kv_cache"] = None

        entry = _MemoryKV(weakref.ref(storage, forget), key, kv)
        entry_ref.append(weakref.ref(entry))
        self._memory_kv_cache = entry
        return kv

    # ------------------------------------------------------------------ attention pieces

    @staticmethod
    def _src_attention(att: MultiHeadedAttention, h: Tensor, kv: Tuple[Tensor, Tensor],
                       mask: Optional[Tensor], group: int) -> Tensor:
        """Source attention of queries ``h`` ``(B, n, d)`` on cached ``K, V`` ``(U, H, T, d_k)``.

        Hypothesis ``u * group + j`` attends to memory row ``u`` (``B = U * group``).
        ``mask`` is ``(1 | U | B, 1, T)`` (True = valid frame) or None.
        """
        k, v = kv
        b, n, _ = h.shape
        u, heads, t, dk = k.shape
        q = _apply(att.linear_q, h).view(u, group, n, heads, dk).permute(0, 3, 1, 2, 4)
        q = att.q_norm(q.reshape(u, heads, group * n, dk))
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(dk)  # (U, H, g*n, T)
        masked = None
        if mask is not None:
            if mask.dim() != 3 or mask.size(1) != 1 or mask.size(-1) != t:
                raise ValueError(f"memory mask must be (batch, 1, {t}), got {tuple(mask.shape)}")
            mb = mask.size(0)
            if mb == b:
                masked = mask.view(u, 1, group, 1, t).eq(0)
            elif mb in (1, u):
                masked = mask.view(mb, 1, 1, 1, t).eq(0)
            else:
                raise ValueError(f"memory mask with {mb} rows for {b} hypotheses")
            scores = scores.view(u, heads, group, n, t)
        attn = _dropout(att.dropout, _masked_softmax(scores, masked)).view(u, heads, group * n, t)
        ctx = torch.matmul(attn, v)  # (U, H, g*n, d_k)
        ctx = ctx.view(u, heads, group, n, dk).permute(0, 2, 3, 1, 4).reshape(b, n, heads * dk)
        return _apply(att.linear_out, ctx)

    @staticmethod
    def _self_attention_cached(
        att: MultiHeadedAttention,
        h: Tensor,
        past: Optional[Tuple[Tensor, Tensor, Optional[Tensor]]],
        start: int,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Self-attention of new positions ``start..start+n-1`` given the prefix's K/V.

        Args:
            h: ``(B, n, d)`` (normalized) inputs of the new positions.
            past: ``(K, V, rows)`` of the earlier positions: K, V ``(start, B', H, d_k)``
                and the ``(B,)`` rows of them that the hypotheses continue (None: all, in
                order); or None when ``start`` is 0.
        Returns:
            output ``(B, n, d)`` and ``K, V`` ``(start+n, B, H, d_k)`` of the whole prefix.
        """
        heads, dk = att.h, att.d_k
        b, n, _ = h.shape
        t = start + n
        fused = _fused_qkv(att)
        if fused is not None:  # one product for q, k and v
            q, k, v = torch.nn.functional.linear(h, fused[0], fused[1]).split(heads * dk, dim=-1)
        else:
            q, k, v = att.linear_q(h), att.linear_k(h), att.linear_v(h)
        q = att.q_norm(_split_heads(q, heads, dk))
        k = att.k_norm(k.view(b, n, heads, dk))
        # gather the surviving prefixes and append the new positions, time-major
        k_all = k.new_empty(t, b, heads, dk)
        v_all = v.new_empty(t, b, heads, dk)
        if past is not None:
            k_past, v_past, rows = past
            if rows is None:
                k_all[:start].copy_(k_past)
                v_all[:start].copy_(v_past)
            else:
                torch.index_select(k_past, 1, rows, out=k_all[:start])
                torch.index_select(v_past, 1, rows, out=v_all[:start])
        k_all[start:].copy_(k.transpose(0, 1))
        v_all[start:].copy_(v.view(b, n, heads, dk).transpose(0, 1))
        scores = torch.matmul(q, k_all.permute(1, 2, 3, 0)) / math.sqrt(dk)  # (B, H, n, t)
        masked = None
        if n > 1:  # causal: new position start+i sees positions <= start+i
            pos = torch.arange(t, device=h.device)
            masked = pos[None, :] > (start + torch.arange(n, device=h.device))[:, None]
        attn = _dropout(att.dropout, _masked_softmax(scores, masked))
        ctx = torch.matmul(attn, v_all.permute(1, 2, 0, 3))  # (B, H, n, d_k)
        return _apply(att.linear_out, _merge_heads(ctx)), k_all, v_all

    def _embed_from(self, ys: Tensor, start: int) -> Tensor:
        """Input layer output at positions ``start..`` of ``ys`` ``(B, t)``: ``(B, t-start, d)``."""
        if start == 0:
            return self.embed(ys)
        modules = list(self.embed)
        pos = modules[-1]
        if type(pos) not in (PositionalEncoding, ScaledPositionalEncoding):
            return self.embed(ys)[:, start:]
        x = ys[:, start:]
        for m in modules[:-1]:
            x = m(x)
        pos.extend_pe(x.new_zeros(()).expand(1, ys.size(1)))
        pe = pos.pe[:, start:ys.size(1)]
        if type(pos) is ScaledPositionalEncoding:
            x = x + pos.alpha * pe
        else:
            x = x * pos.xscale + pe
        return pos.dropout(x)

    def _output(self, x_last: Tensor) -> Tuple[Tensor, Tensor]:
        """``(B, d)`` last-position output -> (log-probs ``(B, V)`` or hidden, hidden ``(B, d)``)."""
        y = self.after_norm(x_last) if self.normalize_before else x_last
        hidden = y
        if self.output_layer is not None:
            y = torch.log_softmax(self.output_layer(y), dim=-1)
        return y, hidden

    # ------------------------------------------------------------------ decoding

    def _use_espnet(self) -> bool:
        """ESPnet's own incremental decoding: when asked (``use_fast_decoding = False``), or
        when ESPnet caches the memory itself and the layers are ESPnet's."""
        if not self.use_fast_decoding:
            return True
        if self._espnet_path is None:
            dense = all(type(layer) is DecoderLayer for layer in self.decoders)
            self._espnet_path = bool(
                self.prefer_espnet_memory_cache and dense and espnet_caches_memory_kv())
        return self._espnet_path

    def forward_one_step(
        self,
        tgt: Tensor,
        tgt_mask: Tensor,
        memory: Tensor,
        memory_mask: Optional[Tensor] = None,
        *,
        cache: Optional[List[Tensor]] = None,
        return_hs: bool = False,
    ):
        """ESPnet's ``forward_one_step`` (same arguments, cache and results), memory K/V cached.

        Args:
            tgt: ``(B, t)`` token ids (or ``(B, t, V)`` for ``input_layer: linear``).
            tgt_mask: ``(B | 1, t, t)`` bool mask.
            memory: ``(B, T, d)`` encoder output (or fewer rows, see :meth:`batch_score`).
            memory_mask: ``(B | 1, 1, T)`` or None.
            cache: per layer ``(B, t-1, d)`` outputs of the earlier positions, or None.
        Returns:
            log-probs ``(B, V)`` (with ``return_hs``: ``(logp, hidden (B, d))``) and the new
            cache, per layer ``(B, t, d)``.
        """
        if self._use_espnet():
            return super().forward_one_step(tgt, tgt_mask, memory, memory_mask,
                                            cache=cache, return_hs=return_hs)
        x = self.embed(tgt)
        rows, group = self._memory_rows(memory, x.size(0))
        mem = self.memory_kv(rows)
        if cache is None:
            cache = [None] * len(self.decoders)
        new_cache = []
        for layer, c, kv in zip(self.decoders, cache, mem):
            if c is None:
                xq, q_mask = x, tgt_mask
            else:
                xq = x[:, -1:, :]
                q_mask = tgt_mask[:, -1:, :] if tgt_mask is not None else None
            h_full = None
            if layer.self_attn is not None and c is not None:
                h_full = layer.norm1(x) if layer.normalize_before else x

            def self_fn(h: Tensor, layer=layer, h_full=h_full, q_mask=q_mask) -> Tensor:
                kv_in = h if h_full is None else h_full
                return layer.self_attn(h, kv_in, kv_in, q_mask)

            def src_fn(h: Tensor, layer=layer, kv=kv) -> Tensor:
                return self._src_attention(layer.src_attn, h, kv, memory_mask, group)

            out = run_sublayers(layer, xq, self_fn, src_fn)
            x = out if c is None else torch.cat([c, out], dim=1)
            new_cache.append(x)
        y, hidden = self._output(x[:, -1])
        if return_hs:
            return (y, hidden), new_cache
        return y, new_cache

    def _step(
        self,
        ys: Tensor,
        past: Optional[List[Optional[Tuple[Tensor, Tensor]]]],
        start: int,
        xs: Tensor,
        xs_mask: Optional[Tensor],
    ) -> Tuple[Tensor, Tensor, List[Optional[Tuple[Tensor, Tensor]]]]:
        """Score the next token after ``ys`` ``(B, t)`` given the K/V of its first ``start`` positions.

        Returns log-probs ``(B, V)``, hidden ``(B, d)`` and per layer the self-attention
        ``(K, V)`` ``(B, H, t, d_k)`` of the whole prefix (None without self-attention).
        """
        x = self._embed_from(ys, start)
        rows, group = self._memory_rows(xs, x.size(0))
        mem = self.memory_kv(rows)
        new_kv: List[Optional[Tuple[Tensor, Tensor]]] = []
        for i, (layer, kv) in enumerate(zip(self.decoders, mem)):
            layer_past = past[i] if past is not None else None
            slot: List[Optional[Tuple[Tensor, Tensor]]] = [None]

            def self_fn(h: Tensor, layer=layer, layer_past=layer_past, slot=slot) -> Tensor:
                out, k, v = self._self_attention_cached(layer.self_attn, h, layer_past, start)
                slot[0] = (k, v)
                return out

            def src_fn(h: Tensor, layer=layer, kv=kv) -> Tensor:
                return self._src_attention(layer.src_attn, h, kv, xs_mask, group)

            x = run_sublayers(layer, x, self_fn, src_fn)
            new_kv.append(slot[0])
        y, hidden = self._output(x[:, -1])
        return y, hidden, new_kv

    def init_state(self, x: Tensor) -> None:
        """Start of an utterance (ESPnet calls this with its encoder output): clear the memory cache."""
        self.clear_memory_cache()
        return None

    def batch_init_state(self, x: Tensor) -> None:
        return self.init_state(x)

    def score(self, ys: Tensor, state: Optional[DecoderState], x: Tensor, return_hs: bool = False):
        """Score the next token of one hypothesis (ESPnet ``BeamSearch``).

        Args:
            ys: ``(t,)`` prefix token ids; state: its :class:`DecoderState` or None.
            x: ``(T, d)`` encoder output.
        Returns:
            log-probs ``(V,)``, [hidden ``(1, d)`` with ``return_hs``,] new state.
        """
        if self._use_espnet():
            return super().score(ys, state, x, return_hs=return_hs)
        past, start = self._stack_states([state])
        logp, hidden, new_kv = self._step(ys.unsqueeze(0), past, start, x.unsqueeze(0), None)
        new_state = DecoderState(ys.size(0), tuple(new_kv), 0)
        if return_hs:
            return logp.squeeze(0), hidden, new_state
        return logp.squeeze(0), new_state

    def batch_score(
        self,
        ys: Tensor,
        states: List[Optional[DecoderState]],
        xs: Tensor,
        return_hs: bool = False,
        xs_mask: Optional[Tensor] = None,
    ):
        """Score the next token of a batch of hypotheses (ESPnet ``BatchBeamSearch``).

        Args:
            ys: ``(B, t)`` prefix token ids (same length t for all).
            states: B :class:`DecoderState` (from earlier calls) or all None.
            xs: encoder output ``(B, T, d)``, one row per hypothesis (``BatchBeamSearch``
                passes ``x.expand(B, T, d)``: projected once), or ``(U, T, d)`` with U
                dividing B: hypothesis ``u * (B // U) + j`` belongs to utterance ``u``.
            xs_mask: ``(1 | U | B, 1, T)`` valid-frame mask, or None.
        Returns:
            log-probs ``(B, V)`` (with ``return_hs``: ``(logp, hidden (B, d))``) and the B
            new states.
        """
        if self._use_espnet():
            if xs_mask is not None:
                raise NotImplementedError("xs_mask with ESPnet's own batch_score")
            return super().batch_score(ys, states, xs, return_hs=return_hs)
        past, start = self._stack_states(states)
        logp, hidden, new_kv = self._step(ys, past, start, xs, xs_mask)
        t, kv = ys.size(1), tuple(new_kv)
        new_states = [DecoderState(t, kv, b) for b in range(ys.size(0))]
        if return_hs:
            return (logp, hidden), new_states
        return logp, new_states

    def _stack_states(
        self, states: Sequence[Optional[DecoderState]]
    ) -> Tuple[Optional[List[Optional[Tuple[Tensor, Tensor, Optional[Tensor]]]]], int]:
        """Batch per-hypothesis states: per layer ``(K, V, rows)`` (see
        :meth:`_self_attention_cached`), and their length t0."""
        if states[0] is None:
            if any(s is not None for s in states):
                raise ValueError("decoder states: some hypotheses have a state, others None")
            return None, 0
        if not all(isinstance(s, DecoderState) for s in states):
            raise TypeError(
                "decoder states must come from PrunedTransformerDecoder.score/batch_score "
                f"(got {type(states[0]).__name__}); ESPnet forward_one_step caches are not states"
            )
        start = states[0].length
        if any(s.length != start for s in states) or len(states[0].kv) != len(self.decoders):
            raise ValueError("decoder states of different lengths or layer counts in one batch")
        first = states[0].kv
        past: List[Optional[Tuple[Tensor, Tensor, Optional[Tensor]]]] = []
        if all(s.kv is first for s in states):  # one earlier batch: gather its rows
            rows: Optional[Tensor] = None
            ids = [s.row for s in states]
            width = next((kv[0].size(1) for kv in first if kv is not None), 0)
            if ids != list(range(width)):
                device = next((kv[0].device for kv in first if kv is not None), None)
                rows = torch.tensor(ids, dtype=torch.long, device=device)
            for kv in first:
                past.append(None if kv is None else (kv[0], kv[1], rows))
            return past, start
        for i in range(len(self.decoders)):  # hypotheses from different batches
            if first[i] is None:
                past.append(None)
                continue
            k = torch.stack([s.kv[i][0][:, s.row] for s in states], dim=1)
            v = torch.stack([s.kv[i][1][:, s.row] for s in states], dim=1)
            past.append((k, v, None))
        return past, start


def transformer_options(decoder: TransformerDecoder) -> Dict[str, Any]:
    """``TransformerDecoder`` constructor options of a built dense decoder, read from its modules."""
    embed = list(decoder.embed)
    if isinstance(embed[0], torch.nn.Embedding):
        input_layer, vocab = "embed", embed[0].num_embeddings
    else:
        input_layer, vocab = "linear", embed[0].in_features
    pos = embed[-1]
    opts: Dict[str, Any] = {
        "vocab_size": vocab,
        "encoder_output_size": decoder._output_size_bf_softmax,
        "num_blocks": len(decoder.decoders),
        "positional_dropout_rate": pos.dropout.p,
        "input_layer": input_layer,
        "use_output_layer": decoder.output_layer is not None,
        "pos_enc_class": type(pos),
        "normalize_before": decoder.normalize_before,
        "layer_drop_rate": getattr(decoder.decoders, "layer_drop_rate", 0.0),
        "gradient_checkpoint_layers": list(getattr(decoder, "gradient_checkpoint_layers", [])),
    }
    if input_layer == "linear":
        opts["dropout_rate"] = embed[2].p
    if len(decoder.decoders):
        layer = decoder.decoders[0]
        heads = {l.self_attn.h for l in decoder.decoders} | {l.src_attn.h for l in decoder.decoders}
        units = {l.feed_forward.w_1.out_features for l in decoder.decoders}
        if len(heads) != 1 or len(units) != 1:
            raise ValueError("the decoder's layers differ in size: not a dense TransformerDecoder")
        opts.update(
            attention_heads=layer.self_attn.h,
            linear_units=layer.feed_forward.w_1.out_features,
            dropout_rate=layer.dropout.p,
            self_attention_dropout_rate=layer.self_attn.dropout_rate,
            src_attention_dropout_rate=layer.src_attn.dropout_rate,
            concat_after=layer.concat_after,
            qk_norm=not isinstance(layer.self_attn.q_norm, torch.nn.Identity),
            use_flash_attn=bool(getattr(layer.self_attn, "use_flash_attn", False)),
        )
    return {k: v for k, v in opts.items() if k in _TRANSFORMER_PARAMS | {"vocab_size", "encoder_output_size"}}


# =============================================================================
# Speech2Text
# =============================================================================


def fast_decoding(speech2text: Any, require: bool = True) -> bool:
    """Make an ESPnet ``Speech2Text`` decode with :class:`PrunedTransformerDecoder`.

    Replaces ``speech2text.asr_model.decoder`` (an ESPnet ``TransformerDecoder``) by a
    :class:`PrunedTransformerDecoder` holding the same weights (loaded with every key
    checked), and points every beam-search scorer that used the old decoder at the new one.

    Args:
        speech2text: ``espnet2.bin.asr_inference.Speech2Text`` (already built).
        require: raise when the model cannot use the fast decoder (another decoder type,
            no beam search, a quantized decoder); with False, return False instead.
    Returns:
        True when the fast decoder is in use.
    """
    from espnet.nets.beam_search import BeamSearch

    model = speech2text.asr_model
    old = getattr(model, "decoder", None)
    if isinstance(old, PrunedTransformerDecoder):
        return True
    try:
        beam = getattr(speech2text, "beam_search", None)
        if not isinstance(beam, BeamSearch):
            raise TypeError(
                f"fast decoding needs ESPnet's BeamSearch/BatchBeamSearch, got {type(beam).__name__}"
            )
        new = PrunedTransformerDecoder.from_transformer_decoder(old)
    except (TypeError, ValueError, RuntimeError):
        if require:
            raise
        return False
    replaced = 0
    for table in (beam.scorers, beam.full_scorers, beam.part_scorers):
        for k, v in list(table.items()):
            if v is old:
                table[k] = new
                replaced += 1
    for k in list(beam.nn_dict.keys()):
        if beam.nn_dict[k] is old:
            beam.nn_dict[k] = new
    if not replaced:
        if require:
            raise ValueError("the beam search does not score with the model's decoder")
        return False
    model.decoder = new
    return True


# =============================================================================
# Counting with torch (cross-check of the cost model)
# =============================================================================


def espnet_decoding(speech2text: Any) -> None:
    """Make an ESPnet ``Speech2Text`` decode with ESPnet's own incremental algorithm.

    The reference for timing comparisons: an ESPnet ``TransformerDecoder`` already does;
    a :class:`PrunedTransformerDecoder` (``decoder: pruned_transformer``, which ESPnet's
    class cannot hold) runs ESPnet's ``forward_one_step`` / ``score`` / ``batch_score`` on its
    layers, re-projecting the encoder output and the prefix at every step.
    """
    decoder = getattr(speech2text.asr_model, "decoder", None)
    if isinstance(decoder, PrunedTransformerDecoder):
        decoder.use_fast_decoding = False


def count_decoder_macs(
    decoder: TransformerDecoder, prefix_len: int, memory_frames: int, seed: int = 0
) -> Dict[str, int]:
    """MACs of the decoder as :class:`PrunedTransformerDecoder` runs it, counted by torch.

    ``memory_macs``: projecting a ``(memory_frames, d)`` memory; ``token_macs``: one
    :meth:`~PrunedTransformerDecoder.score` step of one hypothesis at prefix length
    ``prefix_len`` with the memory already projected. An ESPnet ``TransformerDecoder`` is
    converted first. Uses ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2).
    """
    from torch.utils.flop_counter import FlopCounterMode

    dec = decoder if isinstance(decoder, PrunedTransformerDecoder) else \
        PrunedTransformerDecoder.from_transformer_decoder(decoder)
    was_training, espnet_path, fast = dec.training, dec._espnet_path, dec.use_fast_decoding
    dec.eval()
    dec._espnet_path, dec.use_fast_decoding = False, True  # count what the cost model describes
    param = next(dec.parameters())
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(memory_frames, dec.dims.attention_dim, generator=g).to(param)
    if dec.dims.input_layer == "embed":
        ys = torch.randint(0, dec.dims.vocab_size, (prefix_len,), generator=g).to(param.device)
    else:
        ys = torch.randn(prefix_len, dec.dims.vocab_size, generator=g).to(param)
    try:
        with torch.no_grad():
            dec.init_state(memory)
            with FlopCounterMode(display=False) as counter:
                dec.memory_kv(memory.unsqueeze(0))
            memory_macs = counter.get_total_flops() // 2
            state = None
            for t in range(1, prefix_len):
                _, state = dec.score(ys[:t], state, memory)
            with FlopCounterMode(display=False) as counter:
                dec.score(ys, state, memory)
            token_macs = counter.get_total_flops() // 2
            dec.clear_memory_cache()
    finally:
        dec.train(was_training)
        dec._espnet_path, dec.use_fast_decoding = espnet_path, fast
    return {"token_macs": int(token_macs), "memory_macs": int(memory_macs)}
