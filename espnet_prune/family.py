"""A family of sizes trained together: one gate state, one shift of every gate per size.

``model_conf.target: {params: [0.3, 0.5, 0.7]}`` trains one gated model for several
targets at once. All gates of the model share one :class:`~espnet_prune.gates.GateShift`
``b``: gate ``i`` is read at ``log_alpha_i + b``. The expected cost of the gates rises
monotonically with ``b``, so for each target ``t`` there is one shift ``b_t`` at which the
expected cost is exactly the target's budget (:meth:`GateFamily.solve`: safeguarded Newton
steps, warm-started from the last solution of that target). Each training forward samples
the gates of one member at its ``b_t`` (:mod:`espnet_prune.model`: the members in turn):

* no Lagrangian: every member meets its target in expectation at every step;
* the gradient reaches ``b_t`` through its dependence on the gates (the implicit function
  ``C(log_alpha, b_t) = budget`` gives ``d b_t / d log_alpha = -(dC/d log_alpha) / (dC/db)``,
  :meth:`GateFamily.offset`): opening one unit is paid for by closing others at the exact
  price of the constraint, where a Lagrange multiplier would have to learn it.

One ranking serves every size: the units are ranked by their keep scores at the *reference*
member's shift (the middle target), and each member keeps a prefix of that ranking
(:func:`~espnet_prune.budget.select_nested`), so the members nest; the kept gates of a member
take their open medians at that member's own shift, the state its training sampled
(:func:`member_selector`).
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterator, Optional, Tuple

import torch

from espnet_prune.gates import GateShift, HardConcreteGate
from espnet_prune.targets import CostContext, TargetSelector, build_selector

Tensor = torch.Tensor


class GateFamily:
    """The shared shift of a model's gates and its solution for each target sparsity.

    Args:
        model: an ESPnet ASR model with gated parts (:mod:`espnet_prune.parts`); every
            :class:`~espnet_prune.gates.HardConcreteGate` of those parts gets this
            family's shift.
        kind: target kind (:data:`~espnet_prune.target_kinds.TARGET_KINDS`) of the members.
        ctx: reference input of the MACs costs.
    """

    #: solved when ``|expected cost - budget|`` is at most this fraction of the dense cost
    TOLERANCE = 1e-5
    MAX_STEPS = 100

    def __init__(self, model: torch.nn.Module, kind: str, ctx: CostContext = CostContext()) -> None:
        self.selector: TargetSelector = build_selector(model, kind, None, ctx)
        self.kind = kind
        self.shift = GateShift()
        self.gates = [m for part in self.selector.parts.values() for m in part.modules()
                      if isinstance(m, HardConcreteGate)]
        for gate in self.gates:
            gate.shift = self.shift
        self.selector.shift = self.shift
        self._warm: Dict[float, float] = {}

    def attach(self, selector: TargetSelector) -> TargetSelector:
        """Make ``selector``'s cached structure follow this family's shift."""
        selector.shift = self.shift
        return selector

    def budget(self, sparsity: float) -> float:
        """Cost the member of ``sparsity`` may keep."""
        return (1.0 - float(sparsity)) * self.selector.dense_cost()

    def set(self, value) -> None:
        """Set the shift of every gate (a float, or a 0-dim tensor carrying a gradient)."""
        self.shift.value = value

    def fix_structure(self, fixed: bool) -> None:
        """Make the gated modules apply their selection's eval masks in train mode too
        (``fixed``), or sample their gates again."""
        for part in self.selector.parts.values():
            for module in part.modules():
                if hasattr(type(module), "fixed_structure"):
                    module.fixed_structure = fixed

    def _cost_and_slope(self, b: float) -> Tuple[float, float]:
        """Expected cost at shift ``b`` and its derivative in ``b``."""
        x = torch.tensor(float(b), requires_grad=True)
        old, self.shift.value = self.shift.value, x
        try:
            with torch.enable_grad():
                cost = self.selector.expected_cost()
                (slope,) = torch.autograd.grad(cost, x)
        finally:
            self.shift.value = old
        return float(cost.detach()), float(slope)

    def solve(self, sparsity: float) -> Tuple[float, float]:
        """(shift ``b``, ``dC/db`` there) at which the expected cost of the gates equals the
        budget of ``sparsity``: Newton steps inside a bracket that bisection shrinks when a
        step leaves it. Raises ``ValueError`` for a budget no shift reaches."""
        budget = self.budget(sparsity)
        tol = self.TOLERANCE * self.selector.dense_cost()
        near = min(self._warm, key=lambda s: abs(s - sparsity), default=None)
        b = 0.0 if near is None else self._warm[near]  # warm start: the nearest target solved
        lo, hi = -math.inf, math.inf
        for _ in range(self.MAX_STEPS):
            cost, slope = self._cost_and_slope(b)
            err = cost - budget
            if abs(err) <= tol and slope > 0:
                self._warm[float(sparsity)] = b
                return b, slope
            if err > 0:
                hi = b
            else:
                lo = b
            newton = b - err / slope if slope > 0 else math.nan
            if lo < newton < hi:
                b = newton
            elif math.isfinite(lo) and math.isfinite(hi):
                b = 0.5 * (lo + hi)
            else:  # no bracket yet on this side: widen
                b = b - 4.0 if err > 0 else b + 4.0
        raise ValueError(
            f"model_conf.target.{self.kind}={sparsity}: no shift of the gates reaches this "
            f"budget (expected cost {cost:.6g}, budget {budget:.6g} after {self.MAX_STEPS} steps)"
        )

    def offset(self, sparsity: float) -> Tensor:
        """The shift of ``sparsity`` as a 0-dim tensor whose value is :meth:`solve`'s and
        whose gradient in the gates is the implicit one, ``-(dC/d log_alpha) / (dC/db)``:
        one Newton step from the detached solution, ``b - (C(b) - budget) / C'(b)``."""
        b, slope = self.solve(sparsity)
        self.shift.value = b
        with torch.enable_grad():
            cost = self.selector.expected_cost()
        return b - (cost - self.budget(sparsity)) / slope

    @contextlib.contextmanager
    def at(self, sparsity: float) -> Iterator[float]:
        """Set the shift of ``sparsity`` (no gradient) for the block, then restore the old one."""
        old = self.shift.value
        b, _ = self.solve(sparsity)
        self.shift.value = b
        try:
            yield b
        finally:
            self.shift.value = old


def member_selector(model: torch.nn.Module, kind: str, sparsity: float, reference: float,
                    ctx: CostContext = CostContext(), family: Optional[GateFamily] = None) -> TargetSelector:
    """The selector of one member of a family checkpoint, attached to ``model``'s parts:
    the nested rule on the units ranked at the ``reference`` member's shift, the gates left
    at the shift of ``sparsity`` (their kept values are open medians there). ``family``:
    the model's own, if it has one (default: a new one)."""
    family = family or GateFamily(model, kind, ctx)
    selector = build_selector(model, kind, sparsity, ctx, rule="nested")
    with torch.no_grad(), family.at(reference):
        groups, _ = selector.groups()
        selector.rank_by({g.key: g.scores for g in groups})
    family.set(family.solve(sparsity)[0])
    return selector.attach()
