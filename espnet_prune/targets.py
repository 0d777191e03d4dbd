"""Pruning targets: which cost a target names, its expected value, and the structure that meets it.

A target is one mapping in ``model_conf.target``, ``{kind: sparsity}``; the kinds and their
costs are in :mod:`espnet_prune.target_kinds` (which parses a target without loading torch).

Every gated part of the model (the encoder's blocks and front end, the decoder)
reports its prunable units as :class:`~espnet_prune.budget.UnitGroup` objects with
differentiable keep scores (``unit_groups(metric, scope, ctx)``); what no gate can
remove is a constant. From those, :class:`TargetSelector` gives the differentiable
expected cost that training drives to the target, and the deterministic structure
of the exact-target rule (:func:`~espnet_prune.budget.select_units`) that eval mode,
``eval_sparsity`` and the shrinker use; it hands each part its share of the
selection (``part.eval_selector``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Hashable, List, Optional, Tuple

import torch

from espnet_prune.budget import UnitGroup, expected_cost, kept_cost, max_error, select_nested, select_units
from espnet_prune.parts import gated_parts
from espnet_prune.target_kinds import TARGET_KINDS

Tensor = torch.Tensor

#: How a selector turns scores into a structure (see :class:`TargetSelector`).
SELECTION_RULES = ("exact", "nested")


@dataclass(frozen=True)
class CostContext:
    """Reference input of the MACs costs.

    Attributes:
        seconds: audio length of the reference utterance (s).
        frames_per_second: feature frames per second (100 for a 10 ms hop).
        tokens: output tokens the decoder produces for it (one hypothesis).
        memory_frames: encoder output frames for it (set by :func:`build_selector`
            from the encoder's subsampling; what the decoder's source attention reads).
        latency: the latency table that prices the ``decode`` metric (None: no ``decode``).
    """

    seconds: float = 10.0
    frames_per_second: float = 100.0
    tokens: int = 40
    memory_frames: Optional[int] = None
    latency: Optional[Any] = None  # a cost.latency.LatencyTable (the cost package loads ESPnet)

    @property
    def input_frames(self) -> int:
        return int(round(self.seconds * self.frames_per_second))


class TargetSelector:
    """Expected cost and exact-target structure of a model's gated parts for one target.

    Args:
        parts: name -> gated module with ``unit_groups(metric, scope, ctx)``.
        kind: a key of :data:`TARGET_KINDS`.
        sparsity: target sparsity, or None to aim at the gates' own expected cost.
        ctx: reference input of the MACs.
        rest: cost of what is outside every part, in ``(metric, scope)`` (e.g. the
            embeddings and output layers for ``params``), added to the constant.
        rule: ``exact`` (:func:`~espnet_prune.budget.select_units`, the closest structure)
            or ``nested`` (:func:`~espnet_prune.budget.select_nested`: a prefix of the
            ranking, so the structures of one gate state at several targets nest; a
            family of sizes).
    """

    def __init__(
        self,
        parts: Dict[str, torch.nn.Module],
        kind: str,
        sparsity: Optional[float],
        ctx: CostContext = CostContext(),
        rest: float = 0.0,
        rule: str = "exact",
    ) -> None:
        if rule not in SELECTION_RULES:
            raise ValueError(f"unknown selection rule {rule!r}; choose from {list(SELECTION_RULES)}")
        if kind not in TARGET_KINDS:
            raise ValueError(f"unknown target kind {kind!r}; choose from {list(TARGET_KINDS)}")
        self.parts = parts
        self.kind = kind
        self.metric, self.scope = TARGET_KINDS[kind]
        self.sparsity = sparsity
        self.ctx = ctx
        self.rest = float(rest)
        self.rule = rule
        self._cache: Optional[Tuple[Tuple, Dict[str, Dict[Hashable, Tensor]]]] = None
        self._dense: Optional[float] = None
        self._scores: Optional[Dict[Tuple[str, Hashable], Tensor]] = None
        #: the gates' shared shift (:mod:`espnet_prune.family`): scores depend on it
        self.shift: Optional[Any] = None

    def rank_by(self, scores: Dict[Tuple[str, Hashable], Tensor]) -> "TargetSelector":
        """Rank units by ``scores`` (group key ``(part, key)`` -> ``(n,)``, higher kept
        first) instead of the gates' keep probabilities: a one-shot criterion such as
        weight magnitude (:mod:`espnet_prune.magnitude`). Costs and the exact-target rule
        are unchanged; every group must be given."""
        groups, _ = self.groups()
        missing = [g.key for g in groups if g.key not in scores]
        wrong = [g.key for g in groups if g.key in scores and scores[g.key].shape != g.scores.shape]
        if missing or wrong:
            raise ValueError(f"rank_by: no scores for groups {missing[:5]}, wrong shape for {wrong[:5]}")
        self._scores = {k: v.detach().clone() for k, v in scores.items()}
        self._cache = None
        return self

    def attach(self) -> "TargetSelector":
        """Make every part's eval mode use this selector's structure."""
        for part in self.parts.values():
            object.__setattr__(part, "eval_selector", self)
        return self

    # -- costs ------------------------------------------------------------

    def groups(self) -> Tuple[List[UnitGroup], Tensor]:
        """All parts' groups (keys ``(part, key)``, differentiable scores) and the constant."""
        groups: List[UnitGroup] = []
        constant: Any = self.rest
        metric = self.metric
        if metric == "decode":  # priced from the parts' MACs (cost.metrics.PRICED_METRICS)
            from espnet_prune.cost.latency import decode_groups

            metric = "macs"
        for name, part in self.parts.items():
            part_groups, part_constant = part.unit_groups(metric, self.scope, self.ctx)
            if self.metric == "decode":
                part_groups, part_constant = decode_groups(
                    name, part_groups, part_constant, part.module_keys(), self.ctx.latency,
                    self.ctx.tokens)
            constant = constant + part_constant
            for g in part_groups:
                key = (name, g.key)
                scores = g.scores if self._scores is None else self._scores.get(key, g.scores)
                groups.append(
                    UnitGroup(
                        key, scores, g.unit_cost, g.fixed_cost,
                        {(name, k): c for k, c in g.pair_costs.items()}, g.presence,
                    )
                )
        return groups, constant

    def dense_cost(self) -> float:
        """Cost of the unpruned model (computed once: gates do not change it)."""
        if self._dense is None:
            with torch.no_grad():
                groups, constant = self.groups()
                self._dense = float(kept_cost(groups, {g.key: torch.arange(g.n) for g in groups}) + float(constant))
        return self._dense

    def expected_cost(self) -> Tensor:
        """Differentiable expected cost of the gates."""
        groups, constant = self.groups()
        return expected_cost(groups) + constant

    def expected_sparsity(self) -> Tensor:
        return 1.0 - self.expected_cost() / self.dense_cost()

    def error_bound(self) -> float:
        """The sparsity error the exact-target rule guarantees (``budget.max_error / dense``)."""
        groups, _ = self.groups()
        return max_error(groups) / self.dense_cost()

    # -- the deterministic structure --------------------------------------

    @torch.no_grad()
    def _version_key(self) -> Tuple:
        """Changes whenever a gate changes: in-place updates bump ``_version``, and the
        checksum catches writes through ``.data`` (which keep the version counter)."""
        params = [p for part in self.parts.values() for p in part.gate_parameters()]
        flat = torch.cat([p.detach().reshape(-1) for p in params]).double()
        weights = torch.arange(1, flat.numel() + 1, dtype=flat.dtype, device=flat.device)
        checksum = (float(flat.sum()), float((flat * weights).sum()))
        shift = 0.0 if self.shift is None else float(self.shift)
        return tuple((id(p), p._version, p.data_ptr()) for p in params) + checksum + (
            self.sparsity, id(self._scores), shift)

    @torch.no_grad()
    def selection(self) -> Dict[str, Dict[Hashable, Tensor]]:
        """Per part, the kept unit indices of every group (cached until a gate changes)."""
        version = self._version_key()
        if self._cache is not None and self._cache[0] == version:
            return self._cache[1]
        groups, constant = self.groups()
        if self.sparsity is None:
            budget = float(expected_cost(groups) + constant)
        else:
            budget = (1.0 - float(self.sparsity)) * self.dense_cost()
        budget = max(budget - float(constant), 0.0)
        kept = select_units(groups, budget) if self.rule == "exact" else select_nested(groups, [budget])[0]
        out: Dict[str, Dict[Hashable, Tensor]] = {name: {} for name in self.parts}
        for (name, key), idx in kept.items():
            out[name][key] = idx
        self._cache = (version, out)
        return out

    def for_part(self, part: torch.nn.Module) -> Dict[Hashable, Tensor]:
        for name, p in self.parts.items():
            if p is part:
                return self.selection()[name]
        raise KeyError("this module is not a part of the selector")

    @torch.no_grad()
    def achieved_cost(self) -> float:
        """Exact cost of the deterministic structure."""
        groups, constant = self.groups()
        sel = self.selection()
        flat = {(name, key): idx for name, keep in sel.items() for key, idx in keep.items()}
        return kept_cost(groups, flat) + float(constant)

    def achieved_sparsity(self) -> float:
        return 1.0 - self.achieved_cost() / self.dense_cost()

    @torch.no_grad()
    def sparsity_of(self, selection: Dict[str, Dict[Hashable, Tensor]]) -> float:
        """Sparsity, in this selector's cost, of another selector's structure over the
        same parts (``other.selection()``), e.g. the decode time of a parameter target's."""
        groups, constant = self.groups()
        flat = {(name, key): idx for name, keep in selection.items() for key, idx in keep.items()}
        return 1.0 - (kept_cost(groups, flat) + float(constant)) / self.dense_cost()


def model_params(model: torch.nn.Module) -> int:
    """Parameters a plain ESPnet model saves: no gates, no pruning state."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if not name.endswith("log_alpha") and not name.startswith("pruning.")
    )


def _rest_of_model(model: torch.nn.Module, parts: Dict[str, torch.nn.Module], metric: str,
                   ctx: CostContext) -> float:
    """Cost of everything outside the gated parts, for the ``model`` scope."""
    if metric == "params":
        inner = TargetSelector(parts, "params", None, ctx)
        return float(model_params(model) - inner.dense_cost())
    if metric == "decode":  # CTC and search; a decoder without gates decodes dense
        from espnet_prune.cost.latency import search_seconds

        seconds = search_seconds(ctx.latency, ctx.tokens)
        decoder = getattr(model, "decoder", None)
        if decoder is not None and "decoder" not in parts:
            t = ctx.latency
            seconds += t.decoder_mac_s * dense_decoder_macs(decoder, ctx.memory_frames, ctx.tokens)
            seconds += sum(t.module_s("decoder", kind, ctx.tokens) * n
                           for kind, n in decoder_sublayer_counts(decoder).items())
        return seconds
    t_enc = ctx.memory_frames
    d = model.encoder.dims.output_size
    macs = 0.0
    if getattr(model, "ctc", None) is not None:
        macs += t_enc * d * model.ctc.ctc_lo.out_features
    decoder = getattr(model, "decoder", None)
    if decoder is not None and "decoder" not in parts:
        macs += float(dense_decoder_macs(decoder, t_enc, ctx.tokens))
    return macs


def dense_decoder_macs(decoder: torch.nn.Module, memory_frames: int, tokens: int) -> float:
    """MACs of one hypothesis decoded for ``tokens`` steps by a (pruned) Transformer decoder,
    source keys/values once per utterance (:func:`espnet_prune.cost.decoder_cost`)."""
    from espnet_prune.cost import decoder_cost
    from espnet_prune.structure import DecoderDims, transformer_options

    if hasattr(decoder, "cost"):
        return float(decoder.cost(memory_frames=memory_frames, tokens=tokens)["utterance_macs"])
    opts = transformer_options(decoder)
    dims = DecoderDims.from_decoder_conf(opts.pop("vocab_size"), opts.pop("encoder_output_size"), opts)
    return float(decoder_cost(dims, dims.dense_structure(), memory_frames=memory_frames, tokens=tokens)["utterance_macs"])


def decoder_sublayer_counts(decoder: torch.nn.Module) -> Dict[str, int]:
    """Sublayers of a Transformer decoder's layers, per kind (``self_attn``, ``src_attn``, ``ffn``)."""
    from espnet_prune.structure import SUBLAYERS

    return {kind: sum(getattr(layer, attr, None) is not None for layer in decoder.decoders)
            for kind, (_, attr, _, _) in SUBLAYERS.items()}


def build_selector(model: torch.nn.Module, kind: str, sparsity: Optional[float],
                   ctx: CostContext = CostContext(), rule: str = "exact") -> TargetSelector:
    """The selector of ``model``'s gated parts for target ``{kind: sparsity}`` (``rule``:
    see :class:`TargetSelector`)."""
    parts = gated_parts(model)
    if "encoder" not in parts:
        raise ValueError(f"{type(model.encoder).__name__} has no gates: nothing to prune")
    from espnet_prune.cost import frontend_cost

    metric, scope = TARGET_KINDS[kind]
    if metric == "decode" and ctx.latency is None:
        raise ValueError(f"a {kind} target or bound needs a latency table "
                         "(model_conf.latency_table; python -m espnet_prune.bin.latency measures one)")
    if metric == "decode" and ctx.latency.seconds > 0:  # priced where the table was measured
        ctx = dataclasses.replace(ctx, seconds=ctx.latency.seconds, tokens=ctx.latency.steps or ctx.tokens)
    ctx = dataclasses.replace(ctx, memory_frames=frontend_cost(model.encoder.dims, ctx.input_frames)[2])
    if scope != "model":
        outside = [name for name in parts if name != "encoder"]
        if scope == "blocks" and parts["encoder"].gated_frontend:
            outside.append("encoder front end (subsampling_channels)")
        if outside and sparsity is not None:
            raise ValueError(
                f"model_conf.target.{kind} covers the {scope} only, but {outside} also "
                "have gates, which nothing would hold to a budget: use a target whose scope "
                "covers them (params or macs for the decoder, encoder_* for the front end) "
                "or remove those gates"
            )
        parts = {"encoder": parts["encoder"]}
    rest = _rest_of_model(model, parts, metric, ctx) if scope == "model" else 0.0
    selector = TargetSelector(parts, kind, sparsity, ctx, rest, rule)
    if sparsity is not None:
        with torch.no_grad():
            _, constant = selector.groups()
        reachable = 1.0 - float(constant) / selector.dense_cost()
        if sparsity > reachable:
            raise ValueError(
                f"model_conf.target.{kind}={sparsity} cannot be reached: with every gate of "
                f"{sorted(parts)} closed the sparsity is {reachable:.3f} (gate more of the "
                "model, e.g. the front end or the decoder, or choose a scoped target such "
                "as block_params)"
            )
    return selector
