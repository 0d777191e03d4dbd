"""The gated-part interface: what the selection, training and the shrinker ask of a gated part.

A *gated part* is a module of an ESPnet ASR model, held in one of its attributes
(:data:`PART_NAMES`), that carries hard-concrete gates. Today: the encoder
(:class:`~espnet_prune.encoder.GatedConformerEncoder`, its front end
:class:`~espnet_prune.frontend.GatedConv2dSubsampling` nested in it) and the decoder
(:class:`~espnet_prune.gated_decoder.GatedTransformerDecoder`). Every part implements
:class:`GatedPart`:

* **unit groups**: :meth:`~GatedPart.unit_groups` ``(metric, scope, ctx)`` offers the part's
  prunable units to the model-wide selection (:mod:`espnet_prune.budget`) with their
  differentiable keep scores and exact costs (:mod:`espnet_prune.cost`), plus the cost
  no gate removes; keys are the part's own (e.g. ``(block, module)``).
* **applying a selection**: the model's :class:`~espnet_prune.targets.TargetSelector` is
  attached as ``part.eval_selector``; in eval mode the part reads its share
  (``selector.for_part(part)``) and masks its units with the one eval-mode rule of the
  gates (:meth:`~espnet_prune.gates.HardConcreteGate.eval_mask`).
* **shrinking**: :meth:`~GatedPart.shrink` returns a plain module that computes what the
  part computes in eval mode, and the ``<name>_conf`` that rebuilds it under ESPnet's
  registry name :attr:`~GatedPart.shrunk_name`. :func:`espnet_prune.shrink.shrink_asr_model`
  only loops over the parts.

**Adding a part.** A part that lives inside an existing one (as the front end inside
the encoder) adds its groups to its host's ``unit_groups`` under keys of its own and
is shrunk by its host: one file plus the host's three calls. A part held by another
model attribute (e.g. ``ctc``) implements :class:`GatedPart` in its own file, is
registered with ESPnet's class choices (:mod:`espnet_prune.task`) and its attribute is
added to :data:`PART_NAMES`.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, List, Mapping, Optional, Protocol, Tuple, runtime_checkable

import torch

#: Attributes of an ESPnet ASR model that may hold a gated part, in selection order.
PART_NAMES: Tuple[str, ...] = ("encoder", "decoder")


@runtime_checkable
class GatedPart(Protocol):
    """What every gated part provides (see the module docstring)."""

    #: ESPnet registry name of the plain class :meth:`shrink` returns.
    shrunk_name: str
    #: The model-wide selector whose selection eval mode uses (None until attached).
    eval_selector: Optional[Any]

    def unit_groups(self, metric: str, scope: str, ctx: Any) -> Tuple[List[Any], Any]:
        """(groups, constant): the prunable unit groups in ``metric`` within ``scope``
        and the part's cost in that scope that no gate removes."""

    def module_keys(self) -> List[Hashable]:
        """Keys of the part's modules, as its groups name them: each costs a call overhead
        in the ``decode`` metric while it keeps a unit (:mod:`espnet_prune.cost.latency`)."""

    def gate_parameters(self) -> List[torch.nn.Parameter]:
        """Every ``log_alpha`` of the part (for the gates' own optimizer)."""

    def shrink(self, keep: Optional[Mapping[Hashable, torch.Tensor]] = None) -> Tuple[torch.nn.Module, Dict[str, Any]]:
        """(plain module, its ``<name>_conf``) computing what the part computes in eval
        mode under ``keep`` (default: its share of the attached selection)."""


def gated_parts(model: torch.nn.Module) -> Dict[str, GatedPart]:
    """The gated parts of an ESPnet ASR model, by attribute name (:data:`PART_NAMES`)."""
    parts = {}
    for name in PART_NAMES:
        part = getattr(model, name, None)
        if isinstance(part, GatedPart):
            parts[name] = part
    return parts
