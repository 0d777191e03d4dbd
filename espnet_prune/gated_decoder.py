"""Gated Transformer decoder (ESPnet name ``gated_transformer``).

ESPnet's ``TransformerDecoder`` (every option of it is accepted, same parameter names: a
dense ``transformer`` checkpoint loads with every dense key matched) plus hard-concrete
gates (:mod:`espnet_prune.gates`) on the units and sublayers of every decoder layer::

    decoder: gated_transformer
    decoder_conf:
        attention_heads: 4
        linear_units: 2048
        num_blocks: 6
        ...                       # any TransformerDecoder option
        # which gates exist (default: all six)
        gate_granularities: [self_heads, src_heads, ffn_units, self_attn, src_attn, ffn]
        gate_conf: {init_keep_prob: 0.9, temperature: 0.667, limit_l: -0.1, limit_r: 1.1}

Gates of layer ``i`` (state-dict keys ``decoders.{i}.gates.{name}.log_alpha``):

=============  ============================================================================
name           what it multiplies
=============  ============================================================================
``self_heads`` one gate per self-attention head: the head's ``d_k`` inputs of ``linear_out``
``src_heads``  one gate per source-attention head: likewise
``ffn_units``  one gate per FFN hidden unit: that input of ``w_2``
``self_attn``  one gate: the whole self-attention branch (``linear_out`` bias included)
``src_attn``   one gate: the whole source-attention branch
``ffn``        one gate: the whole FFN branch (``w_2`` bias included)
=============  ============================================================================

A sublayer whose unit gates are all closed is removed with its bias.

* **Train mode**: masks are sampled at every call (``forward`` is teacher forcing).
* **Eval mode** (validation, decoding): the structure of the exact-target rule
  (:mod:`espnet_prune.budget`) chosen by ``self.eval_selector`` (a
  :class:`~espnet_prune.targets.TargetSelector`; a model-wide one is attached by
  :func:`~espnet_prune.targets.build_selector` ``(...).attach()``; without one the decoder
  aims at the expected parameters of its own gates). Kept units are at their gate's open
  median times the sublayer gate's open median; a sublayer with no kept unit is removed,
  a layer with nothing left is skipped. ``forward`` applies these masks to the dense
  weights; incremental decoding (``score``, ``batch_score``, ``forward_one_step``,
  ``init_state`` ..., used by ESPnet's ``BeamSearch`` and ``Speech2Text``) runs the shrunk
  :class:`~espnet_prune.pruned_decoder.PrunedTransformerDecoder` (:meth:`GatedTransformerDecoder.shrink`),
  built once and reused until the selection, a gate or a weight changes: the same function,
  with the fast decoder's memory key/value caching.

Supported: ``normalize_before: true`` and ``concat_after: false`` (as for the gated
encoder); anything else fails at build time naming the ``decoder_conf`` key.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import torch
from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention
from espnet.nets.pytorch_backend.transformer.decoder_layer import DecoderLayer
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder

from espnet_prune.blocks import MaskedInputLinear
from espnet_prune.budget import UnitGroup, module_group
from espnet_prune.cost import check_metric, decoder_fixed_cost, sublayer_costs
from espnet_prune.decoder_layer import slice_decoder_layer
from espnet_prune.pruned_decoder import PrunedTransformerDecoder
from espnet_prune.gates import GateConfig, HardConcreteGate, samples
from espnet_prune.options import inherit_signature
from espnet_prune.shrink import load_strict
from espnet_prune.gated_decoding import GatedDecoding
from espnet_prune.structure import SUBLAYERS, DecoderLayerStructure

Tensor = torch.Tensor

#: Gate names: one unit gate per sublayer (the structure field of
#: :data:`espnet_prune.structure.SUBLAYERS`), then one gate per whole sublayer.
DECODER_GRANULARITIES: Tuple[str, ...] = (
    "self_heads", "src_heads", "ffn_units", "self_attn", "src_attn", "ffn",
)

#: ``decoder_conf`` options of ESPnet's ``TransformerDecoder`` (besides the two sizes)
_TRANSFORMER_OPTIONS = frozenset(inspect.signature(TransformerDecoder.__init__).parameters) - {
    "self", "vocab_size", "encoder_output_size"}

#: (unit mask, branch scale) of one sublayer; either may be None (= all ones / 1)
Masks = Tuple[Optional[Tensor], Optional[Tensor]]


# =============================================================================
# Output projection carrying the masks
# =============================================================================


class GatedOutputLinear(MaskedInputLinear):
    """``nn.Linear`` computing ``output_scale * linear(x * input_mask)``.

    The closing projection of a gated sublayer (``linear_out`` of an attention, ``w_2``
    of an FFN): ``input_mask`` ``(in,)`` holds the unit mask (a head's value repeated over
    its ``d_k`` inputs), ``output_scale`` (a scalar tensor) the sublayer gate, which thus
    scales the whole branch, bias included. Same parameter names as ``nn.Linear``.
    Masks are set by the decoder before each call; they are never copied or pickled.
    """

    output_scale: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        if self.output_scale is not None:
            y = y * self.output_scale
        return y

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["input_mask"] = None
        state["output_scale"] = None
        return state


def _closing_linear(module: torch.nn.Module) -> torch.nn.Linear:
    """The projection that closes a decoder sublayer (where its masks go)."""
    if isinstance(module, MultiHeadedAttention):
        return module.linear_out
    return module.w_2


def _unit_count(module: torch.nn.Module) -> int:
    return module.h if isinstance(module, MultiHeadedAttention) else module.w_1.out_features


# =============================================================================
# Layer
# =============================================================================


@dataclass
class SublayerDecision:
    """Eval-mode decision for one sublayer.

    Attributes:
        keep: sorted indices ``(k,)`` of the kept heads / units (empty: removed).
        unit_scale: ``(k,)`` value of each kept unit (its gate's open median), or None
            when the sublayer has no unit gate.
        scale: scalar value of the sublayer gate (its open median), or None when the
            sublayer has no sublayer gate.
    """

    keep: Tensor
    unit_scale: Optional[Tensor]
    scale: Optional[Tensor]


class GatedDecoderLayer(DecoderLayer):
    """ESPnet ``DecoderLayer`` (pre-norm) owning hard-concrete gates over its sublayers.

    ``self.gates`` maps a name of :data:`DECODER_GRANULARITIES` to a
    :class:`~espnet_prune.gates.HardConcreteGate` (``n`` = heads / hidden units for a unit
    gate, 1 for a sublayer gate). The forward pass is ESPnet's; the masks live on the
    sublayers' closing projections (:class:`GatedOutputLinear`), set by the decoder.
    """

    @classmethod
    def from_layer(
        cls, layer: DecoderLayer, granularities: Sequence[str], config: GateConfig
    ) -> "GatedDecoderLayer":
        """Take over the modules (and parameters) of an ESPnet ``DecoderLayer`` and add gates."""
        new = cls(layer.size, layer.self_attn, layer.src_attn, layer.feed_forward,
                  layer.dropout.p, layer.normalize_before, layer.concat_after)
        for name in ("norm1", "norm2", "norm3", "dropout"):
            setattr(new, name, getattr(layer, name))
        new.gates = torch.nn.ModuleDict()
        for name, (unit_gate, attr, _, _) in SUBLAYERS.items():
            module = getattr(new, attr)
            _closing_linear(module).__class__ = GatedOutputLinear
            if unit_gate in granularities:
                new.gates[unit_gate] = HardConcreteGate(_unit_count(module), config)
            if name in granularities:
                new.gates[name] = HardConcreteGate(1, config)
        return new.train(layer.training)

    def sublayer(self, name: str) -> torch.nn.Module:
        """Sublayer named as in :data:`~espnet_prune.structure.SUBLAYERS`."""
        return getattr(self, SUBLAYERS[name][1])

    # -- masks ------------------------------------------------------------------

    def set_masks(self, masks: Mapping[str, Masks]) -> None:
        """Put ``(unit mask (n,) or None, branch scale () or None)`` per sublayer on the
        closing projections (a head's value is repeated over its ``d_k`` inputs)."""
        for name, (unit, scale) in masks.items():
            module = self.sublayer(name)
            out = _closing_linear(module)
            if unit is not None and isinstance(module, MultiHeadedAttention):
                unit = unit.repeat_interleave(module.d_k)
            out.input_mask, out.output_scale = unit, scale

    def sampled_masks(self) -> Dict[str, Masks]:
        """Train-mode masks: one hard-concrete sample per gate (differentiable in log_alpha).

        A sublayer whose sampled unit mask is all zero is removed, bias included.
        """
        masks: Dict[str, Masks] = {}
        for name, (unit_gate, _, _, _) in SUBLAYERS.items():
            unit = self.gates[unit_gate]() if unit_gate in self.gates else None
            scale = self.gates[name]()[0] if name in self.gates else None
            if unit is not None:
                nonempty = (unit > 0).any().to(unit.dtype)
                scale = nonempty if scale is None else scale * nonempty
            masks[name] = (unit, scale)
        return masks

    def decisions(self, keep: Mapping[str, Tensor]) -> Dict[str, SublayerDecision]:
        """Eval-mode decision of every sublayer under the selection ``keep``.

        Args:
            keep: sublayer name -> kept indices of its unit group (the decoder's share of
                the exact-target selection for this layer); a gated sublayer missing from
                it keeps everything. For a sublayer with only a sublayer gate the group has
                one unit (the whole sublayer): ``[0]`` keeps it, ``[]`` removes it.
        """
        out: Dict[str, SublayerDecision] = {}
        device = self.norm1.weight.device
        for name, (unit_gate, _, _, _) in SUBLAYERS.items():
            n = _unit_count(self.sublayer(name))
            has_units, has_whole = unit_gate in self.gates, name in self.gates
            all_units = torch.arange(n, device=device)
            idx = keep.get(name)
            if idx is None:
                idx = all_units
            elif has_units:
                idx = idx.to(device=device, dtype=torch.long)
            else:  # the one-unit group of a sublayer gate
                idx = all_units if idx.numel() else all_units[:0]
            unit_scale = self.gates[unit_gate].kept_values(idx) if has_units else None
            scale = self.gates[name].kept_values(all_units[:1])[0] if has_whole else None
            out[name] = SublayerDecision(idx, unit_scale, scale)
        return out

    def eval_masks(self, keep: Mapping[str, Tensor]) -> Dict[str, Masks]:
        """Deterministic masks of :meth:`decisions`: kept units at their values, others 0;
        a removed sublayer has branch scale 0."""
        masks: Dict[str, Masks] = {}
        for name, d in self.decisions(keep).items():
            unit_gate = SUBLAYERS[name][0]
            unit = self.gates[unit_gate](d.keep) if unit_gate in self.gates else None
            scale = None
            if name in self.gates:
                scale = self.gates[name].module_value(d.keep.numel() > 0)
            elif d.keep.numel() == 0 and unit is not None:
                scale = unit.new_zeros(())
            masks[name] = (unit, scale)
        return masks

    def structure_under(self, keep: Mapping[str, Tensor]) -> DecoderLayerStructure:
        """Kept heads / units of each sublayer under the selection ``keep``."""
        d = self.decisions(keep)
        return DecoderLayerStructure(**{
            field_name: int(d[name].keep.numel()) for name, (field_name, _, _, _) in SUBLAYERS.items()
        })

    @torch.no_grad()
    def shrunk(self, keep: Mapping[str, Tensor]) -> Optional[torch.nn.Module]:
        """Physically smaller copy (:class:`~espnet_prune.decoder_layer.PrunedDecoderLayer`) with
        the gate values folded into the closing projections, or None when nothing is kept."""
        d = self.decisions(keep)
        if all(x.keep.numel() == 0 for x in d.values()):
            return None
        for name in ("self_attn", "src_attn"):
            # ESPnet keeps the last attention weights here (a non-leaf tensor after a forward
            # under autograd, which the layer copy of slice_decoder_layer cannot deep-copy)
            self.sublayer(name).attn = None
        return slice_decoder_layer(
            self,
            d["self_attn"].keep, d["src_attn"].keep, d["ffn"].keep,
            self_head_scale=d["self_attn"].unit_scale,
            src_head_scale=d["src_attn"].unit_scale,
            ffn_unit_scale=d["ffn"].unit_scale,
            self_scale=d["self_attn"].scale,
            src_scale=d["src_attn"].scale,
            ffn_scale=d["ffn"].scale,
        )


# =============================================================================
# Decoder
# =============================================================================


_UNSUPPORTED = {
    "normalize_before": (False, "post-norm layers cannot drop a sublayer cleanly (its norm "
                                "would stay in the gated model and go in the shrunk one)"),
    "concat_after": (True, "the concat linear of a gated attention is not supported"),
}


def check_decoder_conf(gate_granularities: Optional[List[str]], transformer_kwargs: Mapping[str, Any]) -> List[str]:
    """The gate names of a ``gated_transformer`` ``decoder_conf`` (default: all), after
    checking its options; a :class:`ValueError` names the offending key."""
    if "layer_structures" in transformer_kwargs:
        raise ValueError("decoder_conf.layer_structures belongs to pruned_transformer, "
                         "not gated_transformer")
    unknown = sorted(set(transformer_kwargs) - _TRANSFORMER_OPTIONS)
    if unknown:
        raise ValueError(f"decoder_conf: unknown option(s) {unknown} for gated_transformer")
    for key, (bad, why) in _UNSUPPORTED.items():
        if key in transformer_kwargs and transformer_kwargs[key] == bad:
            raise ValueError(f"decoder_conf.{key}={bad}: {why} (gated_transformer)")
    granularities = list(DECODER_GRANULARITIES if gate_granularities is None else gate_granularities)
    bad_names = sorted(set(granularities) - set(DECODER_GRANULARITIES))
    if bad_names:
        raise ValueError(
            f"decoder_conf.gate_granularities: unknown name(s) {bad_names}; "
            f"choose from {list(DECODER_GRANULARITIES)}"
        )
    return granularities


@inherit_signature(TransformerDecoder)
class GatedTransformerDecoder(GatedDecoding, PrunedTransformerDecoder):
    """ESPnet ``TransformerDecoder`` with hard-concrete gates in every layer; a gated part
    (:class:`~espnet_prune.parts.GatedPart`) that shrinks to ``pruned_transformer``.

    Args:
        vocab_size: output tokens V.
        encoder_output_size: attention dimension d.
        gate_granularities: a subset of :data:`DECODER_GRANULARITIES` (default: all).
        gate_conf: :class:`~espnet_prune.gates.GateConfig` fields.
        **transformer_kwargs: every ``TransformerDecoder`` option (dense sizes).

    Attributes:
        dims: :class:`~espnet_prune.structure.DecoderDims` of the dense decoder.
        eval_selector: the :class:`~espnet_prune.targets.TargetSelector` whose selection
            eval mode uses (``None`` until attached or first needed).
    """

    eval_selector: Optional[Any] = None
    shrunk_name = "pruned_transformer"
    #: train mode with the eval-mode masks of the selection (:func:`~espnet_prune.gates.samples`)
    fixed_structure = False

    def __init__(
        self,
        vocab_size: int,
        encoder_output_size: int,
        gate_granularities: Optional[List[str]] = None,
        gate_conf: Optional[Dict[str, Any]] = None,
        **transformer_kwargs: Any,
    ) -> None:
        granularities = check_decoder_conf(gate_granularities, transformer_kwargs)
        gate_config = GateConfig.from_dict(gate_conf)
        super().__init__(vocab_size, encoder_output_size, **transformer_kwargs)
        self.gate_granularities = granularities
        self.gate_config = gate_config
        self.transformer_conf: Dict[str, Any] = dict(transformer_kwargs)
        self._shrunk_cache: Optional[Tuple[Any, Tuple, PrunedTransformerDecoder]] = None
        for i, layer in enumerate(self.decoders):
            self.decoders[i] = GatedDecoderLayer.from_layer(layer, granularities, self.gate_config)

    @classmethod
    def from_transformer_decoder(
        cls,
        decoder: TransformerDecoder,
        gate_granularities: Optional[List[str]] = None,
        gate_conf: Optional[Dict[str, Any]] = None,
    ) -> "GatedTransformerDecoder":
        """Gated copy of a built dense ESPnet ``TransformerDecoder`` (every dense key
        loaded and checked; the gates start at ``gate_conf.init_keep_prob``)."""
        from espnet_prune.structure import transformer_options

        if type(decoder) is not TransformerDecoder:
            raise TypeError(f"expected an ESPnet TransformerDecoder, got {type(decoder).__name__}")
        kwargs = transformer_options(decoder)
        vocab, dim = kwargs.pop("vocab_size"), kwargs.pop("encoder_output_size")
        with torch.random.fork_rng(devices=[]):
            new = cls(vocab, dim, gate_granularities, gate_conf, **kwargs)
        param = next(decoder.parameters())
        new.to(device=param.device, dtype=param.dtype)
        load_strict(new, decoder.state_dict(), what="dense decoder into gated_transformer",
                    may_miss=("log_alpha",))
        return new.train(decoder.training)

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()
        state["_shrunk_cache"] = None  # rebuilt on demand
        return state

    def gate_parameters(self) -> List[torch.nn.Parameter]:
        """All ``log_alpha`` parameters (for their own optimizer)."""
        return [g.log_alpha for layer in self.decoders for g in layer.gates.values()]

    # -- costs: the decoder's part of the exact-target rule ------------------------

    def unit_groups(self, metric: str, scope: str, ctx: Any) -> Tuple[List[UnitGroup], Any]:
        """Prunable groups of the decoder and the decoder cost no gate removes.

        One group per gated sublayer, key ``(layer, sublayer)`` with sublayer ``self_attn``,
        ``src_attn`` or ``ffn``: its units are the heads / hidden units (score
        ``P(unit open) * P(sublayer open)``, presence ``P(sublayer open) * (1 - prod(1 -
        P(unit open)))``, both differentiable), or, with only a sublayer gate, one unit
        costing the whole sublayer. Costs are exact (:func:`~espnet_prune.cost.sublayer_costs`;
        ``macs`` are ``utterance_macs``). The decoder belongs to the ``model`` scope only:
        for ``blocks`` / ``encoder`` it returns no groups and 0.

        Returns:
            (groups, constant) with ``kept_cost(groups, keep) + constant`` equal to
            ``decoder_cost(dims, structure)["params" | "utterance_macs"]`` of the kept structure.
        """
        check_metric(metric)
        if scope != "model":
            return [], 0.0
        costs = sublayer_costs(self.dims, metric, ctx)
        constant: Any = decoder_fixed_cost(self.dims, metric, ctx)
        groups: List[UnitGroup] = []
        for i, layer in enumerate(self.decoders):
            for name, (unit_gate, _, _, _) in SUBLAYERS.items():
                unit_cost, fixed = costs[name]
                n = _unit_count(layer.sublayer(name))
                group = module_group(
                    (i, name), n, unit_cost, fixed,
                    layer.gates[unit_gate].keep_prob() if unit_gate in layer.gates else None,
                    layer.gates[name].keep_prob() if name in layer.gates else None,
                )
                if group is None:
                    constant += n * unit_cost + fixed
                else:
                    groups.append(group)
        return groups, constant

    def module_keys(self) -> List[Tuple[int, str]]:
        """``(layer, sublayer)`` of every sublayer (the ``decode`` metric's call overheads)."""
        return [(i, name) for i in range(len(self.decoders)) for name in SUBLAYERS]

    # -- eval-mode structure -------------------------------------------------------

    def selector(self) -> Any:
        """The attached selector; without one, a selector of this decoder alone that aims at
        the expected parameters of its gates (``TargetSelector({"decoder": self}, "params",
        None)``: in the ``model`` scope the decoder's cost is its own parameters)."""
        if self.eval_selector is None:
            from espnet_prune.targets import TargetSelector

            TargetSelector({"decoder": self}, "params", None).attach()
        return self.eval_selector

    def eval_selection(self) -> Dict[Hashable, Tensor]:
        """The decoder's share of the exact-target selection: ``{(layer, sublayer): kept
        indices (LongTensor)}`` for every gated sublayer."""
        return self.selector().for_part(self)

    def _per_layer(self, keep: Optional[Mapping[Hashable, Tensor]]) -> List[Dict[str, Tensor]]:
        keep = self.eval_selection() if keep is None else keep
        out: List[Dict[str, Tensor]] = [{} for _ in self.decoders]
        for (i, name), idx in keep.items():
            out[i][name] = idx
        return out

    def structure(self, keep: Optional[Mapping[Hashable, Tensor]] = None) -> List[DecoderLayerStructure]:
        """Eval-mode structure (one entry per layer; removed layers as zeros), under the
        eval selection or under ``keep`` (``{(layer, sublayer): indices}``)."""
        return [layer.structure_under(k) for layer, k in zip(self.decoders, self._per_layer(keep))]

    @torch.no_grad()
    def shrink(
        self, keep: Optional[Mapping[Hashable, Tensor]] = None
    ) -> Tuple[PrunedTransformerDecoder, Dict[str, Any]]:
        """Physically smaller decoder computing what this one computes in eval mode under
        ``keep`` (``{(layer, sublayer): kept indices}``, default: the eval selection).

        Returns the :class:`~espnet_prune.pruned_decoder.PrunedTransformerDecoder` (gate values
        folded into ``linear_out`` / ``w_2``, every key checked, same device, dtype and mode)
        and its ``decoder_conf`` (the dense options plus ``layer_structures``).
        """
        per_layer = self._per_layer(keep)
        structures = [l.structure_under(k) for l, k in zip(self.decoders, per_layer)]
        conf = {**self.transformer_conf, "layer_structures": [s.to_dict() for s in structures]}
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten below
            new = PrunedTransformerDecoder(self.dims.vocab_size, self.dims.attention_dim, **conf)
        param = next(self.embed.parameters())
        new.to(device=param.device, dtype=param.dtype)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("decoders.")}
        j = 0
        for layer, k in zip(self.decoders, per_layer):
            small = layer.shrunk(k)
            if small is None:
                continue
            state.update({f"decoders.{j}.{name}": v for name, v in small.state_dict().items()})
            j += 1
        load_strict(new, state, what="shrunk decoder (pruned_transformer)")
        return new.train(self.training), conf

    def decoding_decoder(self) -> PrunedTransformerDecoder:
        """The shrunk decoder that eval-mode incremental decoding runs.

        Cached; rebuilt when the eval selection, a gate or any weight changes (parameter
        storage, version counter, dtype or device).
        """
        selection = self.eval_selection()
        weights = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
        cached = self._shrunk_cache
        if cached is not None and cached[1] == weights and _same_selection(cached[0], selection):
            return cached[2]
        self._shrunk_cache = None  # free the old copy first
        shrunk, _ = self.shrink(selection)
        shrunk.eval()
        self._shrunk_cache = (selection, weights, shrunk)
        return shrunk

    # -- forward passes --------------------------------------------------------------

    def _apply_masks(self) -> None:
        """Masks of the current mode on every layer: sampled (train) or of the eval selection
        (eval mode, or a fixed structure)."""
        if samples(self):
            for layer in self.decoders:
                layer.set_masks(layer.sampled_masks())
        else:
            for layer, keep in zip(self.decoders, self._per_layer(None)):
                layer.set_masks(layer.eval_masks(keep))

    def forward(
        self,
        hs_pad: Tensor,
        hlens: Tensor,
        ys_in_pad: Tensor,
        ys_in_lens: Tensor,
        return_hs: bool = False,
        return_all_hs: bool = False,
    ):
        """ESPnet's teacher-forcing ``forward`` with the masks of the current mode.

        Args:
            hs_pad: ``(B, T, d)`` encoder output; hlens: ``(B,)`` valid frames.
            ys_in_pad: ``(B, L)`` token ids (``(B, L, V)`` for ``input_layer: linear``);
                ys_in_lens: ``(B,)``.
        Returns:
            ``(B, L, V)`` scores before softmax (or hidden ``(B, L, d)`` without an output
            layer), and ``(B,)`` lengths; see ESPnet's ``BaseTransformerDecoder.forward``.

        The masks stay on the layers after the call (non-reentrant gradient checkpointing
        recomputes layers with them during backward); every entry point sets its own.
        """
        self._apply_masks()
        return super().forward(hs_pad, hlens, ys_in_pad, ys_in_lens,
                               return_hs=return_hs, return_all_hs=return_all_hs)


def _same_selection(a: Mapping[Hashable, Tensor], b: Mapping[Hashable, Tensor]) -> bool:
    if a is b:
        return True
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)
