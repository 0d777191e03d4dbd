"""The target kinds, and a target as a config spells it, parsed and checked (no torch here:
``run.sh``'s preflight checks ``--prune_targets`` with it).

A target is one mapping in ``model_conf.target``, ``{kind: sparsity}``, or ``{kind: [x1, x2,
...]}`` for a family of sizes trained together (:mod:`espnet_prune.family`):

========================  =========================================================
kind                      cost whose sparsity is held (DESIGN 2.2)
========================  =========================================================
``params``                parameters of the whole model (what ``model.pth`` holds:
                          embeddings, CTC and output layers included)
``macs``                  MACs of one inference on the reference utterance: encoder
                          on ``cost_seconds`` of audio, CTC projection, and the
                          decoder run incrementally for ``cost_tokens`` tokens (one
                          hypothesis, source keys/values once per utterance)
``encoder_params``        parameters of the encoder
``encoder_macs``          MACs of the encoder on ``cost_seconds`` of audio
``block_params``          parameters of the Conformer blocks
``block_macs``            MACs of the Conformer blocks
``decode``                seconds of one beam-search decode of the reference
                          utterance (encoder, ``cost_tokens`` decoder steps for the
                          beam, CTC scoring and search), priced by a latency table
                          (:mod:`espnet_prune.cost.latency`; ``model_conf.latency_table``)
========================  =========================================================

What the kinds cost, and the structure that meets a target: :mod:`espnet_prune.targets`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Tuple

#: target kind -> (metric, scope)
TARGET_KINDS: Dict[str, Tuple[str, str]] = {
    "params": ("params", "model"),
    "macs": ("macs", "model"),
    "encoder_params": ("params", "encoder"),
    "encoder_macs": ("macs", "encoder"),
    "block_params": ("params", "blocks"),
    "block_macs": ("macs", "blocks"),
    "decode": ("decode", "model"),
}


def parse_target(target: Any, name: str = "model_conf.target") -> Tuple[str, float]:
    """``{kind: x}`` with x in [0, 1) -> (kind, x), errors naming ``name``."""
    if not isinstance(target, Mapping) or len(target) != 1:
        raise ValueError(
            f"{name} must be one mapping like {{params: 0.5}} or {{macs: 0.5}}, got {target!r}"
        )
    (kind, value), = target.items()
    if kind not in TARGET_KINDS:
        raise ValueError(f"{name}.{kind}: unknown cost; choose from {list(TARGET_KINDS)}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}.{kind}={value!r} is not a number") from None
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise ValueError(f"{name}.{kind}={value} must be in [0, 1)")
    return kind, value


def parse_targets(target: Any) -> Tuple[str, List[float]]:
    """``{kind: x}``, or ``{kind: [x1, x2, ...]}`` for a family of sizes trained together
    (:mod:`espnet_prune.family`), -> (kind, the sparsities in increasing order); errors
    name ``model_conf.target``."""
    if isinstance(target, Mapping) and len(target) == 1:
        (kind, values), = target.items()
        if isinstance(values, (list, tuple)):
            parsed = sorted(parse_target({kind: v})[1] for v in values)
            if len(parsed) < 2 or len(set(parsed)) != len(parsed):
                raise ValueError(
                    f"model_conf.target.{kind}: a family needs two or more distinct "
                    f"sparsities, got {list(values)!r}"
                )
            return kind, parsed
    kind, value = parse_target(target)
    return kind, [value]


def middle_target(values: List[float]) -> float:
    """The middle of a family's sparsities (the lower middle of an even count): the member
    validation watches and whose shift ranks the units of every member."""
    ordered = sorted(values)
    return ordered[(len(ordered) + 1) // 2 - 1]
