"""Hard-concrete gates (Louizos et al., 2018) for structured L0 pruning.

A :class:`HardConcreteGate` holds ``n`` independent stochastic gates ``z`` in
``[0, 1]``, each parameterised by a learnable ``log_alpha``:

* train mode: ``u ~ U(0, 1)``,
  ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``,
  ``z = clamp(s * (r - l) + l, 0, 1)``;
* eval mode: a mask is deterministic and needs a selection: the kept gates
  (chosen for all gates of the model together against the target's budget,
  :mod:`espnet_prune.budget`) are each at their median value *given that they
  are open* (``u`` halfway between the smallest ``u`` that opens the gate and
  1): exactly 1 for gates that are nearly always fully open, and > 0 for every
  kept gate; every other gate is 0 (:meth:`HardConcreteGate.eval_mask`, the one
  eval-mode rule every gated part uses).

``P(z > 0) = sigmoid(log_alpha - beta * log(-l / r))`` is the differentiable
keep probability used by the expected-cost model (:mod:`espnet_prune.cost`).

Every formula reads ``log_alpha + shift``, where ``shift`` is a :class:`GateShift` that
all gates of a model share (0 unless a family of sizes trains, :mod:`espnet_prune.family`:
one shift per size moves every gate of the model at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Union

import torch


@dataclass(frozen=True)
class GateConfig:
    """Hyper-parameters shared by all gates of a model.

    Attributes:
        init_keep_prob: initial ``P(z > 0)`` of every gate, in (0, 1).
        init_std: std of the Gaussian noise added to the initial log_alpha.
        temperature: ``beta`` of the hard-concrete distribution.
        limit_l: left stretch limit ``l`` (< 0).
        limit_r: right stretch limit ``r`` (> 1).
    """

    init_keep_prob: float = 0.95
    init_std: float = 0.01
    temperature: float = 2.0 / 3.0
    limit_l: float = -0.1
    limit_r: float = 1.1

    def __post_init__(self) -> None:
        if not 0.0 < self.init_keep_prob < 1.0:
            raise ValueError(
                f"gate_conf.init_keep_prob must be in (0, 1), got {self.init_keep_prob}"
            )
        if self.temperature <= 0.0:
            raise ValueError(
                f"gate_conf.temperature must be > 0, got {self.temperature}"
            )
        if not self.limit_l < 0.0:
            raise ValueError(f"gate_conf.limit_l must be < 0, got {self.limit_l}")
        if not self.limit_r > 1.0:
            raise ValueError(f"gate_conf.limit_r must be > 1, got {self.limit_r}")
        if self.init_std < 0.0:
            raise ValueError(f"gate_conf.init_std must be >= 0, got {self.init_std}")

    @classmethod
    def from_dict(cls, conf: Optional[Dict[str, Any]]) -> "GateConfig":
        """Build from a YAML mapping, rejecting unknown keys by name."""
        conf = dict(conf or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(conf) - known)
        if unknown:
            raise ValueError(
                f"unknown gate_conf key(s) {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**{k: float(v) for k, v in conf.items()})

    @property
    def log_ratio(self) -> float:
        """``beta * log(-l / r)``: shift between log_alpha and the logit of P(z>0)."""
        return self.temperature * math.log(-self.limit_l / self.limit_r)

    def init_log_alpha(self) -> float:
        """log_alpha whose ``P(z > 0)`` equals ``init_keep_prob``."""
        p = self.init_keep_prob
        return math.log(p / (1.0 - p)) + self.log_ratio


def samples(module: torch.nn.Module) -> bool:
    """Whether a gated module samples its gates now: in train mode, unless its structure is
    fixed (its ``fixed_structure``: a family training its members' structures as they will be
    shrunk, :mod:`espnet_prune.family`); otherwise it applies the selection's eval masks."""
    return module.training and not module.fixed_structure


class GateShift:
    """A scalar added to the ``log_alpha`` of every gate that holds this object.

    Attributes:
        value: the shift (a float, or a 0-dim tensor that carries a gradient).
    """

    def __init__(self, value: Union[float, torch.Tensor] = 0.0) -> None:
        self.value = value

    def __float__(self) -> float:
        return float(self.value.detach()) if isinstance(self.value, torch.Tensor) else float(self.value)


class HardConcreteGate(torch.nn.Module):
    """``n`` hard-concrete gates with learnable ``log_alpha`` of shape ``(n,)``.

    Calling the module returns the mask ``z`` of shape ``(n,)``: sampled in
    train mode, deterministic in eval mode.
    """

    def __init__(self, n: int, config: GateConfig = GateConfig()) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"a gate needs n >= 1, got {n}")
        self.n = n
        self.config = config
        self.log_alpha = torch.nn.Parameter(torch.empty(n))
        self.shift: Optional[GateShift] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set log_alpha to the configured initial keep probability (+ noise)."""
        with torch.no_grad():
            self.log_alpha.normal_(self.config.init_log_alpha(), self.config.init_std)

    def espnet_initialization_fn(self) -> None:
        """Called by ``espnet2.torch_utils.initialize``: undo its bias zeroing."""
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"n={self.n}"

    def logits(self) -> torch.Tensor:
        """``log_alpha`` plus the shared shift (if any), shape ``(n,)``."""
        return self.log_alpha if self.shift is None else self.log_alpha + self.shift.value

    def keep_prob(self) -> torch.Tensor:
        """Differentiable ``P(z > 0)``, shape ``(n,)``."""
        return torch.sigmoid(self.logits() - self.config.log_ratio)

    def sample(self) -> torch.Tensor:
        """Reparameterised sample of ``z``, shape ``(n,)``."""
        c = self.config
        eps = 1e-6
        u = torch.rand_like(self.log_alpha).clamp(eps, 1.0 - eps)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.logits()) / c.temperature)
        return (s * (c.limit_r - c.limit_l) + c.limit_l).clamp(0.0, 1.0)

    def eval_mask(self, keep: torch.Tensor) -> torch.Tensor:
        """Eval-mode mask, shape ``(n,)``: the gates at indices ``keep`` (shape
        ``(k,)``, from the model-wide selection) at their open medians, 0 elsewhere."""
        keep = keep.to(device=self.log_alpha.device, dtype=torch.long)
        return self.log_alpha.new_zeros(self.n).index_copy(0, keep, self.kept_values(keep))

    def module_value(self, kept: bool) -> torch.Tensor:
        """Eval-mode value of a one-unit gate over a whole module: its open median when the
        module keeps any unit, else 0 (:meth:`eval_mask` of ``[0]`` or of nothing), scalar."""
        return self.eval_mask(torch.arange(int(kept)))[0]

    def kept_values(self, keep: torch.Tensor) -> torch.Tensor:
        """Values of the kept gates ``keep`` (indices, shape ``(k,)``) in eval mode: their
        open medians, shape ``(k,)`` (what the shrinker folds into the kept weights)."""
        return self.open_median()[keep.to(device=self.log_alpha.device, dtype=torch.long)]

    def open_median(self) -> torch.Tensor:
        """Median of ``z`` given ``z > 0``, shape ``(n,)``, in (0, 1]."""
        c = self.config
        s_open = -c.limit_l / (c.limit_r - c.limit_l)  # s above this gives z > 0
        logit_s_open = math.log(s_open / (1.0 - s_open))
        la = self.logits().double()  # u_open is within 1e-13 of 1 for very closed gates
        u_open = torch.sigmoid(c.temperature * logit_s_open - la)
        u_mid = (1.0 + u_open) / 2.0
        s = torch.sigmoid((torch.logit(u_mid) + la) / c.temperature)
        z = (s * (c.limit_r - c.limit_l) + c.limit_l).clamp(0.0, 1.0)
        return z.to(self.log_alpha.dtype)

    def forward(self, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`eval_mask` of ``keep`` when given (eval mode, or a fixed structure in
        train mode: :func:`samples`); else a sample in train mode."""
        if keep is not None:
            return self.eval_mask(keep)
        if self.training:
            return self.sample()
        raise ValueError(
            "a gate's eval-mode mask needs the kept indices of the model-wide "
            "selection (espnet_prune.budget): call gate(keep)"
        )
