"""Exact-target structure selection: what a pruned model keeps, chosen against its budget.

The gates give every prunable unit (attention head, FFN hidden unit, conv
channel, or a whole module that has only a module gate) a keep score: its
probability of being open, times the open probability of the module it belongs
to. :func:`select_units` turns scores into a deterministic structure whose cost
is as close as possible to a budget, ranking units *globally*, not module by
module:

1. **Rank.** All units of all groups are sorted by score (highest first; ties
   keep the groups' order, then the unit index).
2. **Fill.** Walk the ranking and keep every unit whose marginal cost still fits
   in what is left of the budget. The marginal cost of a unit is its own cost,
   plus its group's fixed cost (pre-norm, output bias...) when it is the group's
   first kept unit: a group with no kept unit is removed and costs nothing, so
   no module ever costs its fixed part for nothing. A unit that does not fit is
   skipped and the walk goes on with the next-ranked units that still fit.
3. **Round.** The fill leaves less than the cost of any unit left out. The
   highest-ranked unit left out is then tried twice: kept as it is (rounding
   up), and kept in exchange for the lowest-ranked kept units that are smaller
   than it (say FFN units for an attention head), dropped until the cost fits
   again. Whichever of the three structures is closest to the budget wins (the
   filled one on a tie), so at most one unit is kept out of rank order.

Guarantee (tested exactly in ``tests/test_budget.py``): unless every unit is
kept (budget at or above the full cost), ``|kept cost - budget| <= c_max / 2``
where ``c_max = max over groups of (unit_cost + fixed_cost)`` (see
:func:`max_error`). In sparsity terms the error is at most
``c_max / (2 * dense cost)``: one half of the largest single unit, e.g. 0.0022
for the LibriSpeech-100 encoder blocks and 0.0135 for the 3-block test fixture
(params). In practice steps 2-3 leave much less: the error is below the
cheapest unit that was left out.

The rule ranks; it does not assume that the expected cost of the gates is
already on target, so a checkpoint taken at any point of training shrinks to the
budget. Costs are plain numbers of any kind (params or MACs): the callers (the
gated encoder, :mod:`espnet_prune.cost`) provide them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import torch

Tensor = torch.Tensor


@dataclass
class UnitGroup:
    """Units that share one cost and one fixed part (the units of one module).

    Attributes:
        key: identifies the group in the result, e.g. ``(block_index, "mha")``.
        scores: keep score of each unit, shape ``(n,)``, higher is kept first.
        unit_cost: cost of one kept unit (> 0).
        fixed_cost: cost paid once when at least one unit is kept (>= 0).
        pair_costs: cost of each (unit of this group, kept unit of group ``key``)
            pair, for costs that are products of two kept counts (the weights of a
            conv between two gated channel sets: ``c_in * c_out * k * k``). Both
            groups must list each other with the same value; each pair is paid once.
        presence: probability that the group keeps at least one unit (for the
            expected fixed cost; default ``1 - prod(1 - scores)``).
    """

    key: Hashable
    scores: Tensor
    unit_cost: float
    fixed_cost: float = 0.0
    pair_costs: Dict[Hashable, float] = field(default_factory=dict)
    presence: Optional[Tensor] = None

    @property
    def n(self) -> int:
        return int(self.scores.numel())


def module_group(
    key: Hashable,
    n: int,
    unit_cost: float,
    fixed_cost: float,
    p_unit: Optional[Tensor] = None,
    p_module: Optional[Tensor] = None,
) -> Optional[UnitGroup]:
    """The group of a gated module with ``n`` units (heads, FFN units, channels).

    ``p_unit`` ``(n,)`` and ``p_module`` ``(1,)`` are the differentiable keep
    probabilities of its unit gates and of its module gate, either may be None.
    With unit gates a unit scores ``P(module) * P(unit)``; with only a module gate
    the whole module is one unit. Returns None for a module without gates: its
    cost ``n * unit_cost + fixed_cost`` is a constant.
    """
    if p_unit is not None:
        scores, presence = p_unit, 1.0 - torch.prod(1.0 - p_unit)
        if p_module is not None:
            scores, presence = scores * p_module, presence * p_module[0]
        return UnitGroup(key, scores, unit_cost, fixed_cost, presence=presence)
    if p_module is not None:
        return UnitGroup(key, p_module, n * unit_cost + fixed_cost, 0)
    return None


def max_error(groups: Sequence[UnitGroup]) -> float:
    """Bound on ``|kept cost - budget|`` that :func:`select_units` guarantees:
    half the largest marginal cost of one unit."""
    n = {g.key: g.n for g in groups}
    return max(
        (g.unit_cost + g.fixed_cost + sum(c * n[k] for k, c in g.pair_costs.items()) for g in groups),
        default=0.0,
    ) / 2.0


def kept_cost(groups: Sequence[UnitGroup], kept: Dict[Hashable, Tensor]) -> float:
    """Cost of a selection: kept units, the fixed part of every non-empty group and
    the pairs between coupled groups."""
    total = 0.0
    counts = {g.key: int(kept[g.key].numel()) for g in groups}
    for g in groups:
        k = counts[g.key]
        if k:
            total += k * g.unit_cost + g.fixed_cost
        total += 0.5 * sum(c * k * counts[other] for other, c in g.pair_costs.items())
    return total


def expected_cost(groups: Sequence[UnitGroup]) -> Tensor:
    """Differentiable expected cost of the groups when each unit is kept with
    probability ``scores`` (independently): ``E[k] * unit_cost + P(k > 0) *
    fixed_cost`` per group, plus ``E[k] * E[k'] * pair_cost`` per coupled pair."""
    total = torch.zeros((), dtype=torch.float64)
    expected_k = {g.key: g.scores.sum() for g in groups}
    for g in groups:
        presence = g.presence if g.presence is not None else 1.0 - torch.prod(1.0 - g.scores)
        total = total + expected_k[g.key] * g.unit_cost + presence * g.fixed_cost
        for other, c in g.pair_costs.items():
            total = total + 0.5 * c * expected_k[g.key] * expected_k[other]
    return total


def select_units(groups: Sequence[UnitGroup], budget: float) -> Dict[Hashable, Tensor]:
    """Kept unit indices of every group (sorted ``LongTensor``, possibly empty).

    See the module docstring for the rule and its guarantee.
    """
    _check_groups(groups)
    keys = [g.key for g in groups]
    if not groups:
        return {}
    if any(g.pair_costs for g in groups):
        return _select_coupled(groups, float(budget))
    sizes = torch.tensor([g.n for g in groups])
    scores = torch.cat([g.scores.detach().reshape(-1).double().cpu() for g in groups])
    group_of = torch.repeat_interleave(torch.arange(len(groups)), sizes)
    unit_in_group = torch.cat([torch.arange(g.n) for g in groups])
    unit_cost = torch.tensor([float(g.unit_cost) for g in groups], dtype=torch.float64)
    fixed_cost = torch.tensor([float(g.fixed_cost) for g in groups], dtype=torch.float64)

    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = _Ranked(group_of[order], unit_cost, fixed_cost)
    kept, left = ranked.fill(float(budget))
    if left > 0 and not bool(kept.all()):
        # 3. Round with the best unit left out: keep it as it is, or in exchange
        # for the lowest-ranked smaller units; the closest to the budget wins.
        best_out = int(torch.nonzero(~kept)[0])
        for candidate in ranked.with_unit(kept, left, best_out):
            if abs(candidate[1]) < abs(left):
                kept, left = candidate

    kept_units = order[kept]
    result: Dict[Hashable, Tensor] = {}
    kept_group, kept_idx = group_of[kept_units], unit_in_group[kept_units]
    for i, key in enumerate(keys):
        result[key] = torch.sort(kept_idx[kept_group == i]).values
    return result


class _Ranked:
    """Units in ranked order with their group ids, and the greedy walk over them."""

    def __init__(self, group_ids: Tensor, unit_cost: Tensor, fixed_cost: Tensor) -> None:
        self.g = group_ids
        self.unit_cost, self.fixed_cost = unit_cost, fixed_cost

    def marginal(self, pos: Tensor, opened: Tensor) -> Tensor:
        g = self.g[pos]
        return self.unit_cost[g] + self.fixed_cost[g] * ~opened[g]

    def fill(self, budget: float) -> Tuple[Tensor, float]:
        """Step 2 (fill). Returns (kept mask in ranked order, budget left)."""
        n = self.g.numel()
        kept = torch.zeros(n, dtype=torch.bool)
        undecided = torch.ones(n, dtype=torch.bool)
        opened = torch.zeros(self.unit_cost.numel(), dtype=torch.bool)
        left = budget
        while True:  # the greedy walk, run as prefix sums between the units that stop fitting
            pos = torch.nonzero(undecided).flatten()
            if pos.numel() == 0:
                break
            g = self.g[pos]
            first = _first_occurrence(g) & ~opened[g]
            cum = torch.cumsum(self.unit_cost[g] + self.fixed_cost[g] * first, 0)
            n_fit = int((cum <= left).sum())  # cum is non-decreasing
            if n_fit:
                kept[pos[:n_fit]] = True
                undecided[pos[:n_fit]] = False
                opened[g[:n_fit]] = True
                left -= float(cum[n_fit - 1])
            rest = pos[n_fit:]
            # a unit that does not fit now never will: the remainder only shrinks and
            # every unit of its group has the same marginal cost
            too_big = self.marginal(rest, opened) > left
            undecided[rest[too_big]] = False
            if bool(too_big.all()):
                break
        return kept, left


    def with_unit(self, kept: Tensor, left: float, unit: int) -> List[Tuple[Tensor, float]]:
        """Step 3: ``kept`` plus ranked position ``unit``, as it is and with the
        lowest-ranked kept units of smaller unit cost dropped until the cost fits
        the budget again (when they can make it fit). Each as (kept mask, budget left)."""
        kept = kept.clone()
        counts = torch.bincount(self.g[kept], minlength=self.unit_cost.numel())
        g_u = int(self.g[unit])
        left -= float(self.unit_cost[g_u]) + (float(self.fixed_cost[g_u]) if counts[g_u] == 0 else 0.0)
        kept[unit] = True
        counts[g_u] += 1
        out = [(kept, left)]
        smaller = torch.nonzero(kept & (self.unit_cost[self.g] < self.unit_cost[g_u])).flatten()
        exchanged = kept.clone()
        for p in reversed(smaller.tolist()):
            if left >= 0:
                break
            g = int(self.g[p])
            counts[g] -= 1
            left += float(self.unit_cost[g]) + (float(self.fixed_cost[g]) if counts[g] == 0 else 0.0)
            exchanged[p] = False
        if left >= 0:
            out.append((exchanged, left))
        return out


def _select_coupled(groups: Sequence[UnitGroup], budget: float) -> Dict[Hashable, Tensor]:
    """The same rule, walked unit by unit, for groups whose marginal cost depends on
    the kept count of coupled groups (:attr:`UnitGroup.pair_costs`).

    A unit's marginal cost only grows while the walk goes on (coupled groups only
    gain units), so a unit that does not fit never fits later, and every pair is
    paid exactly once: when its second unit is kept. The exchange of step 3 drops
    only units of uncoupled groups.
    """
    ranked = _ranked_units(groups)
    marginal = _MarginalCost(groups)

    counts = [0] * len(groups)
    kept = [False] * len(ranked)
    left = budget
    for p, (gi, _) in enumerate(ranked):
        cost = marginal(counts, gi)
        if cost <= left:
            kept[p], left = True, left - cost
            counts[gi] += 1
    out = [p for p, k in enumerate(kept) if not k]
    if left > 0 and out:
        u = out[0]
        g_u = ranked[u][0]
        up_counts, up_kept = list(counts), list(kept)
        up_left = left - marginal(up_counts, g_u)
        up_kept[u] = True
        up_counts[g_u] += 1
        best = (kept, left)
        if abs(up_left) < abs(left):
            best = (up_kept, up_left)
        ex_counts, ex_kept, ex_left = list(up_counts), list(up_kept), up_left
        for p in range(len(ranked) - 1, -1, -1):
            if ex_left >= 0:
                break
            gi = ranked[p][0]
            if not ex_kept[p] or marginal.pairs[gi] or groups[gi].unit_cost >= groups[g_u].unit_cost:
                continue
            ex_kept[p] = False
            ex_counts[gi] -= 1
            ex_left += groups[gi].unit_cost + (groups[gi].fixed_cost if ex_counts[gi] == 0 else 0.0)
        if ex_left >= 0 and abs(ex_left) < abs(best[1]):
            best = (ex_kept, ex_left)
        kept = best[0]
    result: Dict[Hashable, List[int]] = {g.key: [] for g in groups}
    for p, (gi, j) in enumerate(ranked):
        if kept[p]:
            result[groups[gi].key].append(j)
    return {k: torch.tensor(sorted(v), dtype=torch.long) for k, v in result.items()}


def select_nested(groups: Sequence[UnitGroup], budgets: Sequence[float]) -> List[Dict[Hashable, Tensor]]:
    """One selection per budget, nested: what a smaller budget keeps, every larger one keeps.

    The rule for a family of sizes from one ranking (the ranking of :func:`select_units`):
    walk the ranked units once, each costing its marginal cost when added (its own cost,
    its group's fixed cost when it is the group's first unit, its pairs with the kept units
    of coupled groups). Each budget keeps the longest prefix of the ranking whose cost fits,
    plus the next unit when that lands closer to the budget. Prefixes of one ranking are
    nested, and ``|kept cost - budget| <= max_error(groups)`` for every budget below the full
    cost (the error is at most half the marginal cost of the unit at the cut). Unlike
    :func:`select_units` no unit is skipped or exchanged, so the structures may land a little
    further from their budgets than :func:`select_units`' (still within the same bound).

    Returns the kept unit indices of every group (sorted ``LongTensor``), one dict per budget
    in the order of ``budgets``.
    """
    if not groups:
        return [{} for _ in budgets]
    _check_groups(groups)
    ranked = _ranked_units(groups)
    marginal = _MarginalCost(groups)
    counts = [0] * len(groups)
    prefix_cost = [0.0]  # cost of the first p ranked units
    for gi, _ in ranked:
        prefix_cost.append(prefix_cost[-1] + marginal(counts, gi))
        counts[gi] += 1
    out = []
    for budget in budgets:
        p = max(bisect.bisect_right(prefix_cost, float(budget)) - 1, 0)  # longest prefix that fits
        if p < len(ranked) and prefix_cost[p + 1] - budget < budget - prefix_cost[p]:
            p += 1  # the next unit lands closer
        kept: Dict[Hashable, List[int]] = {g.key: [] for g in groups}
        for gi, j in ranked[:p]:
            kept[groups[gi].key].append(j)
        out.append({k: torch.tensor(sorted(v), dtype=torch.long) for k, v in kept.items()})
    return out


def _ranked_units(groups: Sequence[UnitGroup]) -> List[Tuple[int, int]]:
    """(group index, unit index) of every unit, by score (highest first; ties keep the
    groups' order, then the unit index)."""
    units = sorted(
        (-float(s), gi, j) for gi, g in enumerate(groups) for j, s in enumerate(g.scores.detach().cpu().tolist())
    )
    return [(gi, j) for _, gi, j in units]


class _MarginalCost:
    """Cost of adding one unit of group ``gi`` to a selection with ``counts`` kept units per
    group: its own cost, its group's fixed cost when it is the group's first unit, and its
    pairs with the kept units of coupled groups."""

    def __init__(self, groups: Sequence[UnitGroup]) -> None:
        index = {g.key: gi for gi, g in enumerate(groups)}
        self.groups = groups
        self.pairs = [[(index[k], c) for k, c in g.pair_costs.items()] for g in groups]

    def __call__(self, counts: List[int], gi: int) -> float:
        g = self.groups[gi]
        cost = g.unit_cost + (g.fixed_cost if counts[gi] == 0 else 0.0)
        return cost + sum(c * counts[h] for h, c in self.pairs[gi])


def _check_groups(groups: Sequence[UnitGroup]) -> None:
    keys = [g.key for g in groups]
    if len(set(keys)) != len(keys):
        raise ValueError("select_units: group keys must be unique")
    by_key = {g.key: g for g in groups}
    for g in groups:
        if not g.unit_cost > 0 or g.fixed_cost < 0:
            raise ValueError(f"group {g.key!r}: unit_cost must be > 0 and fixed_cost >= 0")
        for other, c in g.pair_costs.items():
            if other not in by_key or by_key[other].pair_costs.get(g.key) != c or c < 0:
                raise ValueError(f"group {g.key!r}: pair cost with {other!r} must be >= 0 and symmetric")


def _first_occurrence(ids: Tensor) -> Tensor:
    """Boolean mask, True at the first position of each distinct value of ``ids`` (1-D)."""
    if ids.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    _, inverse = torch.unique(ids, return_inverse=True)
    first_pos = torch.full((int(inverse.max()) + 1,), ids.numel(), dtype=torch.long)
    first_pos.scatter_reduce_(0, inverse, torch.arange(ids.numel()), reduce="amin")
    return torch.arange(ids.numel()) == first_pos[inverse]

