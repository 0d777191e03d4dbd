"""What holds the gates at the target while pruning (DESIGN 2.3): the sparsity control.

The pruning model (``prune_espnet``, :mod:`espnet_prune.model`) calls its
:class:`SparsityControl` twice a forward, :meth:`~SparsityControl.before` (set the gates
up) and :meth:`~SparsityControl.after` (the loss term and the logged values):

* **one target** (``target: {params: 0.5}``): the Lagrangian

  ``lambda1 * (s - t) + (lambda2 + k_p / 2) * (s - t)^2``

  of the expected sparsity ``s`` and the ramped target ``t``. ``lambda1/2`` are maximised:
  their gradient is reversed, so the optimizer that holds them does gradient ascent. ``k_p``
  (``sparsity_p_gain``) is a fixed proportional gain: without it the multipliers integrate
  the error at Adam's constant rate and wind up (overshoot 0.24-0.31 at a 0.5 target on the
  test fixture). With a whole-model target the gates' momentum still carries them 0.014
  past the target after the ramp at ``k_p = 200``; the default 1000 keeps the sparsity
  within 0.007 of the target from the end of the ramp (tests/test_prune_training.py).
* **a family** (``target: {params: [0.3, 0.5, 0.7]}``): each training forward samples the
  next member's gates at the shift that meets its ramped target exactly
  (:mod:`espnet_prune.family`); no loss term, no multipliers. From ``fixed_after`` training
  forwards on (``model_conf.family_fixed_after``) the gates are frozen and each forward trains
  the next member's deterministic structure, the one it will be shrunk to (eval-mode masks,
  dropout and batch norm training): the shared weights learn to serve every member as it will
  be used. The frozen gates get no gradient, so data-parallel training then needs ESPnet's
  ``--unused_parameters true``.

* **a bound** (``bound: {decode: 0.45}`` beside one target): a second cost's expected
  sparsity ``s_b`` is held *at least* at its ramped bound ``t_b`` by the one-sided term

  ``lambda_b * h + k_b / 2 * h^2``, ``h = max(0, t_b - s_b)``

  (``lambda_b`` maximised like ``lambda1``; it grows only while the bound is violated;
  ``k_b``, ``bound_p_gain``, defaults to ``k_p``: a larger one holds the bound closer). The
  eval structure is the target's; the bound's sparsity of that structure is logged
  (``eval_bound_sparsity``).

Either way a target ramps linearly over ``target_warmup_steps`` training forwards from the
expected sparsity of the first update (the gates' initial state). In eval mode the gates
keep the structure of the exact-target rule (:mod:`espnet_prune.budget`) for the target
(a family: the nested rule for its middle member, at that member's shift).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from espnet_prune.family import GateFamily, member_selector
from espnet_prune.target_kinds import middle_target
from espnet_prune.targets import CostContext, build_selector

Tensor = torch.Tensor


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return -grad


class SparsityControl:
    """The sparsity control of one pruning model.

    Args:
        model: the pruning model; its ``pruning`` state (:class:`~espnet_prune.model.PruningState`)
            holds the step counter, the ramp's start and (one target) the multipliers.
        kind: target kind (:data:`~espnet_prune.target_kinds.TARGET_KINDS`).
        targets: the target sparsity, or a family's (two or more, increasing).
        ctx: reference input of the MACs costs.
        warmup_steps: training forwards over which each target ramps up.
        p_gain: ``k_p`` of the Lagrangian (one target).
        fixed_after: a family's training forwards before its members' structures are fixed
            (None: never).
        bound: ``(kind, sparsity)`` of a cost held at least at that sparsity (one target
            only), or None.
        bound_p_gain: ``k_b`` of the bound's term (None: ``p_gain``).
    """

    #: training forwards between two evaluations of the exact-target structure for
    #: the ``eval_sparsity`` log (it costs a global ranking of every unit)
    EVAL_SPARSITY_EVERY = 10

    def __init__(self, model: torch.nn.Module, kind: str, targets: List[float], ctx: CostContext,
                 warmup_steps: int, p_gain: float, fixed_after: Optional[int] = None,
                 bound: Optional[Tuple[str, float]] = None,
                 bound_p_gain: Optional[float] = None) -> None:
        self.model, self.kind, self.ctx = model, kind, ctx
        self.state = model.pruning
        self.fixed_after = fixed_after
        self._fixed: Optional[Dict[float, Tuple[float, Any]]] = None
        self.targets = list(targets)
        self.target = middle_target(self.targets)
        self.warmup_steps = int(warmup_steps)
        self.p_gain = float(p_gain)
        # expected cost for the control; the exact-target structure for eval mode
        # (a family: the middle member, a prefix of the ranking at its shift)
        self.selector = build_selector(model, kind, self.target, ctx,
                                       rule="nested" if len(self.targets) > 1 else "exact").attach()
        self.family: Optional[GateFamily] = None
        if len(self.targets) > 1:
            self.family = GateFamily(model, kind, ctx)
            self.family.attach(self.selector)
        self._last_eval_sparsity: Optional[float] = None
        self.bound = bound
        self.bound_p_gain = self.p_gain if bound_p_gain is None else float(bound_p_gain)
        self._last_eval_bound: Optional[float] = None
        self.bound_selector = None if bound is None else build_selector(model, bound[0], bound[1], ctx)

    def current_target(self, final: Optional[float] = None) -> float:
        """Target sparsity at the current step: a linear ramp over ``warmup_steps`` from the
        expected sparsity of the first update (the gates' initial state) to ``final``
        (default: the target), so the ramp never asks for less than the gates already give."""
        final = self.target if final is None else final
        if self.warmup_steps == 0:
            return final
        start = max(0.0, min(float(self.state.ramp_start), final))
        return start + (final - start) * self.ramp_fraction()

    def ramp_fraction(self) -> float:
        """How far the ramps are, in [0, 1]: training forwards over ``warmup_steps``."""
        if self.warmup_steps == 0:
            return 1.0
        return min(1.0, float(self.state.num_updates) / self.warmup_steps)

    def _eval_due(self, training: bool, last: Optional[float]) -> bool:
        """Recompute a logged eval-structure value: in eval mode, the first time, and every
        :attr:`EVAL_SPARSITY_EVERY` training forwards."""
        return not training or last is None or int(self.state.num_updates) % self.EVAL_SPARSITY_EVERY == 0

    def expected_sparsity(self) -> Tensor:
        """Differentiable expected sparsity of the target's cost (at the gates' current shift)."""
        return self.selector.expected_sparsity().to(torch.float32)

    @torch.no_grad()
    def eval_sparsity(self) -> float:
        """Sparsity of the deterministic (eval-mode) structure: what shrinking would give
        (a family: its middle member)."""
        if self.family is None:
            return self.selector.achieved_sparsity()
        with self.family.at(self.target):
            return self.selector.achieved_sparsity()

    def logged_eval_sparsity(self, training: bool) -> float:
        """:meth:`eval_sparsity`, recomputed every :attr:`EVAL_SPARSITY_EVERY` training forwards."""
        if self._eval_due(training, self._last_eval_sparsity):
            self._last_eval_sparsity = self.eval_sparsity()
        return self._last_eval_sparsity

    def before(self, training: bool) -> Optional[float]:
        """Before the student's forward. A family: set the gates' shift and return this
        forward's member target (training: the members in turn, each on its ramp, the shift
        carrying the implicit gradient, :meth:`GateFamily.offset`; eval: the middle member).
        One target: nothing to do (None)."""
        if self.family is None:
            return None
        if not training:  # (the fixed phase attaches each member's selector in turn)
            self.selector.attach()
            self.family.set(self.family.solve(self.target)[0])
            return self.target
        step = int(self.state.num_updates)
        if self.fixed_after is not None and step >= self.fixed_after:
            member = self.targets[step % len(self.targets)]
            shift, selector = self.fixed_members()[member]
            self.family.set(shift)
            selector.attach()
            self.family.fix_structure(True)
            return member
        if float(self.state.ramp_start) < 0:  # the ramp starts from the gates unshifted
            self.family.set(0.0)
            with torch.no_grad():
                self.state.ramp_start.fill_(float(self.expected_sparsity()))
        member = self.current_target(self.targets[step % len(self.targets)])
        self.family.set(self.family.offset(member))
        return member

    def fixed_members(self) -> Dict[float, Tuple[float, Any]]:
        """Member target -> (its shift, its selector: the nested rule on the middle member's
        ranking, :func:`~espnet_prune.family.member_selector`), computed once when the
        structures are fixed; the gates are frozen from then on."""
        if self._fixed is None:
            for gate in self.family.gates:
                gate.log_alpha.requires_grad_(False)
            self._fixed = {}
            for t in self.targets:
                selector = member_selector(self.model, self.kind, t, self.target, self.ctx, self.family)
                self._fixed[t] = (float(self.family.shift), selector)
        return self._fixed

    def after(self, member: Optional[float], training: bool) -> Tuple[Any, Dict[str, Tensor]]:
        """(loss term, logged values) after the forward (the step counter already counts it):
        the Lagrangian of the ramped target; for a family (``member``: :meth:`before`'s) no
        term, the shift having met the target."""
        if member is not None:
            shift = float(self.family.shift)
            self.family.set(shift)  # the graph keeps the differentiable shift; the gates need no more
            with torch.no_grad():
                return 0.0, dict(
                    expected_sparsity=self.expected_sparsity(),
                    target_sparsity=torch.tensor(member),
                    gate_shift=torch.tensor(shift),
                    eval_sparsity=torch.tensor(self.logged_eval_sparsity(training)),
                )
        state = self.state
        expected = self.expected_sparsity()
        if training and float(state.ramp_start) < 0:
            state.ramp_start.fill_(float(expected.detach()))
        target = self.current_target()
        gap = expected - target
        if training:
            state.max_overshoot.clamp_(min=float(gap.detach()))
        lam1 = _GradReverse.apply(state.lambda1)
        lam2 = _GradReverse.apply(state.lambda2)
        loss = lam1 * gap + (lam2 + 0.5 * self.p_gain) * gap * gap
        stats = dict(
            loss_lagrangian=loss.detach(),
            expected_sparsity=expected.detach(),
            target_sparsity=torch.tensor(target),
            eval_sparsity=torch.tensor(self.logged_eval_sparsity(training)),
            max_overshoot=state.max_overshoot.detach().clone(),
            lambda1=state.lambda1.detach().clone(),
            lambda2=state.lambda2.detach().clone(),
        )
        if self.bound_selector is not None:
            bound_loss, bound_stats = self._bound_term(training)
            loss = loss + bound_loss
            stats.update(bound_stats)
        return loss, stats

    def _bound_term(self, training: bool) -> Tuple[Tensor, Dict[str, Tensor]]:
        """The one-sided term that keeps the bound's expected sparsity at least at its
        ramped value, and its logged values."""
        expected = self.bound_selector.expected_sparsity().to(torch.float32)
        ramped = self.bound[1] * self.ramp_fraction()  # from 0: idle while the bound is met
        short = torch.relu(ramped - expected)
        lam = _GradReverse.apply(self.state.lambda_bound)
        loss = lam * short + 0.5 * self.bound_p_gain * short * short
        if self._eval_due(training, self._last_eval_bound):
            self._last_eval_bound = self.bound_selector.sparsity_of(self.selector.selection())
        return loss, dict(
            bound_sparsity=expected.detach(),
            bound_target=torch.tensor(ramped),
            eval_bound_sparsity=torch.tensor(self._last_eval_bound),
            lambda_bound=self.state.lambda_bound.detach().clone(),
        )
