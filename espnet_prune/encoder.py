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
                             ffn1, mha, conv, ffn2]
        gate_conf: {init_keep_prob: 0.9, temperature: 0.667, limit_l: -0.1, limit_r: 1.1}
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

from espnet_prune.blocks import ConformerBlock, as_masked_input, output_layer, unit_count
from espnet_prune.cost import ModuleCounts, encoder_cost
from espnet_prune.gates import GateConfig, HardConcreteGate
from espnet_prune.structure import GRANULARITIES, MODULES, BlockStructure, ConformerDims

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

    def module_masks(self, name: str) -> tuple:
        """(unit mask (n,) or None, module mask () or None) of module ``name``.

        Sampled in train mode. In eval mode deterministic: a module with unit
        gates keeps ``round(P(module) * sum P(unit))`` units, its expected unit
        count, at their open medians, scaled by the module gate's open median (a
        count of 0 removes the module); a module with only a module gate is kept
        iff ``P(module) >= 0.5``. So the eval structure costs what the expected
        cost says, up to rounding.
        """
        unit_gate = MODULES[name][0]
        has_units, has_whole = unit_gate in self.gates, name in self.gates
        if self.training:
            unit = self.gates[unit_gate]() if has_units else None
            whole = self.gates[name]()[0] if has_whole else None
            return unit, whole
        if not has_units:
            return None, (self.gates[name]()[0] if has_whole else None)
        unit = self.gates[unit_gate].deterministic(self.eval_unit_count(name))
        whole = self.gates[name].open_median()[0] if has_whole else None
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

    def expected_counts(self) -> Dict[str, ModuleCounts]:
        """Differentiable expected kept units and module presence (see cost.py)."""
        counts = {}
        for name, (unit_gate, _) in MODULES.items():
            module = self.module(name)
            if module is None:
                counts[name] = ModuleCounts(0.0, 0.0)
                continue
            n = unit_count(module)
            p_whole = self.gates[name].keep_prob()[0] if name in self.gates else 1.0
            if unit_gate in self.gates:
                p_unit = self.gates[unit_gate].keep_prob()
                units = p_unit.sum()
                present = 1.0 - torch.prod(1.0 - p_unit)
            else:
                units, present = float(n), 1.0
            counts[name] = ModuleCounts(p_whole * units, p_whole * present)
        return counts

    @torch.no_grad()
    def kept_units(self) -> Dict[str, tuple]:
        """Eval-mode decision per module: (kept indices, unit scale or None, module scale or None).

        A module that is removed has an empty index tensor.
        """
        was_training = self.training
        self.eval()
        try:
            out = {}
            for name in MODULES:
                module = self.module(name)
                if module is None:
                    continue
                unit, whole = self.module_masks(name)
                n = unit_count(module)
                keep = torch.arange(n) if unit is None else torch.nonzero(unit > 0).flatten().cpu()
                if whole is not None and whole <= 0:
                    keep = keep[:0]
                scale = unit[keep.to(unit.device)] if unit is not None else None
                out[name] = (keep, scale, whole)
            return out
        finally:
            self.train(was_training)

    @torch.no_grad()
    def eval_unit_count(self, name: str) -> int:
        """Units module ``name`` keeps in eval mode (what :meth:`module_masks` keeps), 0 if removed."""
        module = self.module(name)
        if module is None:
            return 0
        unit_gate = MODULES[name][0]
        p_whole = float(self.gates[name].keep_prob()[0]) if name in self.gates else 1.0
        if unit_gate in self.gates:  # every kept unit has a positive open median
            return int(round(float(self.gates[unit_gate].keep_prob().sum()) * p_whole))
        return unit_count(module) if round(p_whole) >= 1 else 0

    def structure(self) -> BlockStructure:
        """Deterministic (eval-mode) structure of this block, from the gate probabilities."""
        return BlockStructure(**{unit: self.eval_unit_count(name) for name, (unit, _) in MODULES.items()})


def _output_attr(module: torch.nn.Module) -> str:
    layer = output_layer(module)
    return next(name for name, m in module.named_children() if m is layer)


class GatedConformerEncoder(ConformerEncoder):
    """ESPnet ``ConformerEncoder`` with hard-concrete gates in every block.

    Args:
        input_size: input feature dimension.
        gate_granularities: which gates exist, a subset of
            :data:`~espnet_prune.structure.GRANULARITIES` (default: all).
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
        _check_supported(conformer_kwargs)
        super().__init__(input_size, **conformer_kwargs)
        self.dims = ConformerDims.from_encoder_conf(input_size, conformer_kwargs)
        granularities = list(GRANULARITIES if gate_granularities is None else gate_granularities)
        unknown = sorted(set(granularities) - set(GRANULARITIES))
        if unknown:
            raise ValueError(
                f"encoder_conf.gate_granularities: unknown name(s) {unknown}; "
                f"choose from {list(GRANULARITIES)}"
            )
        self.gate_granularities = granularities
        self.gate_config = GateConfig.from_dict(gate_conf)
        for i, layer in enumerate(self.encoders):
            block = GatedConformerBlock.from_espnet_layer(layer)
            block.attach_gates(granularities, self.gate_config)
            self.encoders[i] = block

    def gate_parameters(self) -> List[torch.nn.Parameter]:
        """All ``log_alpha`` parameters (for their own optimizer)."""
        return [g.log_alpha for b in self.encoders for g in b.gates.values()]

    def expected_counts(self) -> List[Dict[str, ModuleCounts]]:
        return [b.expected_counts() for b in self.encoders]

    def expected_cost(self, seconds: float = 10.0, frames_per_second: float = 100.0) -> Dict[str, Tensor]:
        """Differentiable expected encoder cost: ``{"params": ..., "macs": ...}``."""
        return encoder_cost(self.dims, self.expected_counts(), seconds, frames_per_second)

    def structure(self) -> List[BlockStructure]:
        """Deterministic (eval-mode) structure of every block."""
        return [b.structure() for b in self.encoders]


_UNSUPPORTED = {
    "normalize_before": (False, "post-norm blocks cannot drop modules cleanly"),
    "concat_after": (True, "concat_after is not supported"),
    "qk_norm": (True, "qk_norm is not supported"),
}


def _check_supported(conf: Dict[str, Any]) -> None:
    for key, (bad, why) in _UNSUPPORTED.items():
        if key in conf and conf[key] == bad:
            raise ValueError(f"encoder_conf.{key}={bad}: {why} by the pruning encoders")
    if conf.get("positionwise_layer_type", "linear") != "linear":
        raise ValueError(
            "encoder_conf.positionwise_layer_type must be 'linear' for the pruning encoders"
        )
    if conf.get("input_layer", "conv2d") not in ("conv2d", "conv2d1", "conv2d2", "conv2d6", "conv2d8", "linear"):
        raise ValueError(
            f"encoder_conf.input_layer={conf['input_layer']!r} is not supported by the "
            "pruning encoders (use conv2d, conv2d1, conv2d2, conv2d6, conv2d8 or linear)"
        )
