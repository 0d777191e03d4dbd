"""Gated Conformer encoder (ESPnet name ``gated_conformer``).

A drop-in for ESPnet's ``conformer`` encoder with the same options and
parameter names (a dense checkpoint loads with every key matched), plus
hard-concrete gates on heads, FFN units, conv channels and whole modules
(DESIGN 2.1). YAML example::

    encoder: gated_conformer
    encoder_conf:
        output_size: 256
        ...                       # any ConformerEncoder option
        gate_granularities: [heads, ffn1_units, ffn2_units, conv_channels,
                             ffn1, mha, conv, ffn2, subsampling_channels]
        gate_conf: {init_keep_prob: 0.9, temperature: 0.667, limit_l: -0.1, limit_r: 1.1}
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

from espnet_prune.options import inherit_signature

from espnet_prune.blocks import NORMS, ConformerBlock, as_masked_input, block_sizes, output_layer, subset_module, unit_count
from espnet_prune.budget import UnitGroup, module_group
from espnet_prune.cost import block_constant_cost, check_metric, frontend_cost, module_unit_cost
from espnet_prune.frontend import SUBSAMPLING_CLASSES, GatedConv2dSubsampling
from espnet_prune.gates import GateConfig, HardConcreteGate, samples
from espnet_prune.structure import GRANULARITIES, MODULES, BlockStructure, ConformerDims, check_supported_conf

Tensor = torch.Tensor


class GatedConformerBlock(ConformerBlock):
    """A :class:`ConformerBlock` owning hard-concrete gates over its modules and units.

    ``self.gates`` maps a granularity name (``heads``, ``ffn1_units``, ...,
    ``mha``, ``ffn1``, ...) to a :class:`HardConcreteGate`; a module's gate has
    one element, a unit gate one per head / unit / channel.
    """

    def attach_gates(self, granularities: Sequence[str], config: GateConfig) -> None:
        self.gates = torch.nn.ModuleDict()
        for name, (unit_gate, attr) in MODULES.items():
            module = getattr(self, attr)
            if module is None:
                continue
            setattr(module, _output_attr(module), as_masked_input(output_layer(module)))
            if name in granularities:
                self.gates[name] = HardConcreteGate(1, config)
            if unit_gate in granularities:
                self.gates[unit_gate] = HardConcreteGate(unit_count(module), config)

    #: Eval-mode decision of the encoder's exact-target rule: module name ->
    #: kept unit indices (set by :meth:`GatedConformerEncoder.forward`).
    eval_keep: Optional[Dict[str, Tensor]] = None
    #: train mode with the eval-mode masks of the selection (:func:`~espnet_prune.gates.samples`)
    fixed_structure = False

    def module_masks(self, name: str) -> tuple:
        """(unit mask (n,) or None, module mask () or None) of module ``name``.

        Sampled in train mode. In eval mode deterministic: the units that the
        encoder's exact-target rule keeps (:mod:`espnet_prune.budget`), each at
        its open median, scaled by the module gate's open median; a module that
        keeps nothing is removed.
        """
        unit_gate = MODULES[name][0]
        has_units, has_whole = unit_gate in self.gates, name in self.gates
        if samples(self):
            unit = self.gates[unit_gate]() if has_units else None
            whole = self.gates[name]()[0] if has_whole else None
            return unit, whole
        if not (has_units or has_whole):
            return None, None
        if self.eval_keep is None:
            raise RuntimeError(
                "a gated block in eval mode needs its encoder's selection: call the "
                "GatedConformerEncoder, not the block"
            )
        keep = self.eval_keep[name]
        unit = None
        if has_units:
            unit = self.gates[unit_gate](keep)
        whole = None
        if has_whole:
            whole = self.gates[name].module_value(keep.numel() > 0)
        return unit, whole

    def branch_scales(self) -> Dict[str, Optional[Tensor]]:
        scales: Dict[str, Optional[Tensor]] = {}
        for name in MODULES:
            module = self.module(name)
            if module is None:
                continue
            unit, whole = self.module_masks(name)
            out = output_layer(module)
            if unit is None:
                out.input_mask = None
            else:
                if name == "mha":
                    out.input_mask = unit.repeat_interleave(module.d_k)
                else:
                    out.input_mask = unit
                # A module whose units are all closed is removed, bias included.
                nonempty = (unit > 0).any().to(unit.dtype)
                whole = nonempty if whole is None else whole * nonempty
            scales[name] = whole
        return scales

    @torch.no_grad()
    def kept_units(self, keep: Dict[str, Tensor]) -> Dict[str, tuple]:
        """Eval-mode decision per module under the encoder's selection ``keep``:
        (kept indices, unit scale or None, module scale or None); a removed module
        has an empty index tensor."""
        was_training, previous = self.training, self.eval_keep
        self.eval()
        self.eval_keep = keep
        try:
            out = {}
            for name in MODULES:
                module = self.module(name)
                if module is None:
                    continue
                unit, whole = self.module_masks(name)
                n = unit_count(module)
                idx = torch.arange(n) if name not in keep else keep[name].cpu()
                if whole is not None and whole <= 0:
                    idx = idx[:0]
                scale = unit[idx.to(unit.device)] if unit is not None else None
                out[name] = (idx, scale, whole)
            return out
        finally:
            self.eval_keep = previous
            self.train(was_training)

    def structure_under(self, keep: Dict[str, Tensor]) -> BlockStructure:
        """Structure of this block under the encoder's selection ``keep``."""
        sizes = {}
        for name, (unit, _) in MODULES.items():
            module = self.module(name)
            if module is None:
                sizes[unit] = 0
            else:
                sizes[unit] = int(keep[name].numel()) if name in keep else unit_count(module)
        return BlockStructure(**sizes)

    @torch.no_grad()
    def shrunk(self, keep: Dict[str, Tensor]) -> ConformerBlock:
        """Dense copy of this block without what the encoder's selection ``keep`` drops:
        closed units and modules cut out, kept gate values folded into each module's
        output projection (:func:`~espnet_prune.blocks.subset_module`)."""
        kept = self.kept_units(keep)
        modules: Dict[str, Any] = {}
        for name, (_, attr) in MODULES.items():
            module = getattr(self, attr)
            if module is None or len(kept[name][0]) == 0:
                modules[attr] = None
                continue
            idx, unit_scale, whole = kept[name]
            modules[attr] = subset_module(module, idx.to(next(module.parameters()).device), unit_scale, whole)
        new = ConformerBlock(
            self.size, modules["self_attn"], modules["feed_forward"], modules["feed_forward_macaron"],
            modules["conv_module"], self.dropout.p, self.stochastic_depth_rate,
            ff_scale=self.ff_scale, final_norm=self.final_norm,
        )
        for norm in NORMS:
            if norm in new._modules:
                getattr(new, norm).load_state_dict(getattr(self, norm).state_dict())
        return new.to(next(self.parameters()).device).train(self.training)


def _output_attr(module: torch.nn.Module) -> str:
    layer = output_layer(module)
    return next(name for name, m in module.named_children() if m is layer)


@inherit_signature(ConformerEncoder)
class GatedConformerEncoder(ConformerEncoder):
    """ESPnet ``ConformerEncoder`` with hard-concrete gates in every block; a gated part
    (:class:`~espnet_prune.parts.GatedPart`) that shrinks to ``pruned_conformer``.

    Args:
        input_size: input feature dimension.
        gate_granularities: which gates exist, a subset of
            :data:`~espnet_prune.structure.GRANULARITIES` (default: all that apply;
            ``subsampling_channels`` gates the output channels of every Conv2d of
            the front end, :mod:`espnet_prune.frontend`).
        gate_conf: :class:`~espnet_prune.gates.GateConfig` fields.
        **conformer_kwargs: every ``ConformerEncoder`` option.
    """

    def __init__(
        self,
        input_size: int,
        gate_granularities: Optional[List[str]] = None,
        gate_conf: Optional[Dict[str, Any]] = None,
        **conformer_kwargs: Any,
    ) -> None:
        check_supported_conf(conformer_kwargs)
        super().__init__(input_size, **conformer_kwargs)
        self.conformer_conf: Dict[str, Any] = dict(conformer_kwargs)
        self.dims = ConformerDims.from_encoder_conf(input_size, conformer_kwargs)
        if gate_granularities is None:  # every gate that applies
            granularities = [g for g in GRANULARITIES
                             if g != "subsampling_channels" or self.dims.input_layer in SUBSAMPLING_CLASSES]
        else:
            granularities = list(gate_granularities)
        unknown = sorted(set(granularities) - set(GRANULARITIES))
        if unknown:
            raise ValueError(
                f"encoder_conf.gate_granularities: unknown name(s) {unknown}; "
                f"choose from {list(GRANULARITIES)}"
            )
        self.gate_granularities = granularities
        self.gate_config = GateConfig.from_dict(gate_conf)
        if "subsampling_channels" in granularities:
            if self.dims.input_layer not in SUBSAMPLING_CLASSES:
                raise ValueError(
                    "encoder_conf.gate_granularities: subsampling_channels needs a conv front end "
                    f"(input_layer one of {sorted(SUBSAMPLING_CLASSES)}), got {self.dims.input_layer!r}"
                )
            self.embed = GatedConv2dSubsampling.from_espnet(self.embed, self.gate_config, input_size)
        for i, layer in enumerate(self.encoders):
            block = GatedConformerBlock.from_espnet_layer(layer)
            block.attach_gates(granularities, self.gate_config)
            self.encoders[i] = block

    def gate_parameters(self) -> List[torch.nn.Parameter]:
        """All ``log_alpha`` parameters (for their own optimizer)."""
        front = self.embed.gate_parameters() if self.gated_frontend else []
        return front + [g.log_alpha for b in self.encoders for g in b.gates.values()]

    @property
    def gated_frontend(self) -> bool:
        return isinstance(self.embed, GatedConv2dSubsampling)

    def expected_cost(self, seconds: float = 10.0, frames_per_second: float = 100.0) -> Dict[str, Tensor]:
        """Differentiable expected encoder cost: ``params`` / ``macs`` of the whole
        encoder (front end included) and ``block_params`` / ``block_macs``."""
        from espnet_prune.budget import expected_cost
        from espnet_prune.targets import CostContext

        ctx = CostContext(seconds, frames_per_second)
        out = {}
        for metric in ("params", "macs"):
            for scope, key in (("encoder", metric), ("blocks", f"block_{metric}")):
                groups, constant = self.unit_groups(metric, scope, ctx)
                out[key] = expected_cost(groups) + constant
        return out

    # -- the exact-target rule (eval mode, shrinking) ------------------------

    #: Gives eval mode its structure (:class:`~espnet_prune.targets.TargetSelector`);
    #: a model-wide one is attached by the pruning model or the shrinker. Without
    #: one, the encoder aims at the gates' expected block parameters.
    eval_selector: Optional[Any] = None
    shrunk_name = "pruned_conformer"
    #: train mode with the eval-mode masks of the selection (:func:`~espnet_prune.gates.samples`)
    fixed_structure = False

    def set_eval_target(self, kind: str, sparsity: Optional[float], ctx: Optional[Any] = None) -> None:
        """Make eval mode keep the structure that meets ``sparsity`` of an encoder-scoped
        cost ``kind`` (``block_params``, ``block_macs``, ``encoder_params``, ``encoder_macs``)."""
        from espnet_prune.target_kinds import TARGET_KINDS
        from espnet_prune.targets import CostContext, TargetSelector

        if kind not in TARGET_KINDS or TARGET_KINDS[kind][1] == "model":
            raise ValueError(
                f"the encoder alone can hold block_* or encoder_* targets, not {kind!r}"
            )
        TargetSelector({"encoder": self}, kind, sparsity, ctx or CostContext()).attach()

    def selector(self) -> Any:
        if self.eval_selector is None:
            self.set_eval_target("block_params", None)
        return self.eval_selector

    def unit_groups(self, metric: str, scope: str, ctx: Any) -> Tuple[List[UnitGroup], Any]:
        """Prunable groups (one per gated module, key ``(block, module)``) with their
        differentiable keep scores and costs in ``metric`` (``params`` / ``macs`` at
        ``ctx``), and the cost in ``scope`` (``blocks``, ``encoder`` or ``model``)
        that no gate of the encoder removes."""
        check_metric(metric)
        fe_params, fe_macs, t = frontend_cost(self.dims, ctx.input_frames)
        groups: List[UnitGroup] = []
        constant: Any = 0.0
        for i, block in enumerate(self.encoders):
            constant += block_constant_cost(self.dims, metric)
            for name, (unit_gate, _) in MODULES.items():
                module = block.module(name)
                if module is None:
                    continue
                unit_cost, fixed = module_unit_cost(self.dims, name, metric, t)
                n = unit_count(module)
                group = module_group(
                    (i, name), n, unit_cost, fixed,
                    block.gates[unit_gate].keep_prob() if unit_gate in block.gates else None,
                    block.gates[name].keep_prob() if name in block.gates else None,
                )
                if group is None:
                    constant += unit_cost * n + fixed
                else:
                    groups.append(group)
        if scope in ("encoder", "model"):
            if self.gated_frontend:  # keys ("frontend", conv index)
                fe_groups, fe_constant = self.embed.unit_groups(metric, ctx.input_frames)
                groups += fe_groups
                constant += fe_constant
            else:
                constant += fe_params if metric == "params" else fe_macs
            if metric == "params" and self.dims.normalize_before:
                constant += 2 * self.dims.output_size  # after_norm
        return groups, constant

    def module_keys(self) -> List[Tuple[int, str]]:
        """``(block, module)`` of every module the blocks hold (the ``decode`` metric's
        call overheads, :mod:`espnet_prune.cost.latency`)."""
        return [(i, name) for i, block in enumerate(self.encoders) for name in MODULES
                if block.module(name) is not None]

    def eval_selection(self) -> List[Dict[str, Tensor]]:
        """Per block, the kept unit indices of every gated module (the exact-target rule)."""
        keep = self.selector().for_part(self)
        out: List[Dict[str, Tensor]] = [{} for _ in self.encoders]
        for (i, name), idx in keep.items():
            if isinstance(i, int):
                out[i][name] = idx
        return out

    def frontend_keep(self) -> Optional[List[Tensor]]:
        """Kept channels of each front-end Conv2d in eval mode (None: no front-end gates).

        The front end is only in the ``encoder`` and ``model`` scopes: under a
        ``block_*`` target it keeps every channel."""
        if not self.gated_frontend:
            return None
        keep = self.selector().for_part(self)
        if not any(isinstance(k[0], str) for k in keep):
            return [torch.arange(g.n) for g in self.embed.gates]
        return self.embed.keep_from_selection(keep)

    def forward(self, xs_pad: Tensor, ilens: Tensor, *args: Any, **kwargs: Any):
        """ESPnet's ``ConformerEncoder.forward``; in eval mode (or with a fixed structure) the
        blocks and the front end use the exact-target selection."""
        if samples(self):
            return super().forward(xs_pad, ilens, *args, **kwargs)
        for block, keep in zip(self.encoders, self.eval_selection()):
            block.eval_keep = keep
        if self.gated_frontend:
            self.embed.eval_keep = self.frontend_keep()
        try:
            return super().forward(xs_pad, ilens, *args, **kwargs)
        finally:
            for block in self.encoders:
                block.eval_keep = None
            if self.gated_frontend:
                self.embed.eval_keep = None

    def structure(self) -> List[BlockStructure]:
        """Deterministic (eval-mode) structure of every block."""
        return [b.structure_under(k) for b, k in zip(self.encoders, self.eval_selection())]

    @torch.no_grad()
    def shrink(self, keep: Optional[List[Dict[str, Tensor]]] = None) -> Tuple[Any, Dict[str, Any]]:
        """A :class:`~espnet_prune.pruned_encoder.PrunedConformerEncoder` computing what this
        encoder computes in eval mode under ``keep`` (per block, kept indices per module;
        default: the eval selection; the front end keeps its eval selection), every key checked,
        and its ``encoder_conf`` (the dense options plus ``block_structures`` and
        ``subsampling_channels``)."""
        from espnet_prune.pruned_encoder import PrunedConformerEncoder, pruned_encoder_conf
        from espnet_prune.shrink import load_strict

        blocks = [b.shrunk(k) for b, k in zip(self.encoders, keep or self.eval_selection())]
        structure = [BlockStructure(**{MODULES[n][0]: c for n, c in block_sizes(b).items()}) for b in blocks]
        channels = None
        if self.gated_frontend:
            embed, channels = self.embed.shrink(self.frontend_keep())
        conf = pruned_encoder_conf(self.conformer_conf, structure, channels)
        pruned = PrunedConformerEncoder(self.dims.input_size, **conf)
        state = {k: v for k, v in self.state_dict().items()
                 if not k.startswith("encoders.") and not (channels is not None and k.startswith("embed."))}
        if channels is not None:
            state.update({f"embed.{k}": v for k, v in embed.state_dict().items()})
        for i, b in enumerate(blocks):
            state.update({f"encoders.{i}.{k}": v for k, v in b.state_dict().items()})
        load_strict(pruned, state, what="shrunk encoder")
        return pruned.to(next(self.parameters()).device).train(self.training), conf
