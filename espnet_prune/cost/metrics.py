"""The cost vocabulary shared by every gated part, the cost model and the targets.

A cost has a *metric* and a *scope* (a pruning target names one of each,
:data:`espnet_prune.target_kinds.TARGET_KINDS`):

* metric: ``params`` (what ``model.pth`` holds) or ``macs`` (multiply-accumulates of
  matrix products and convolutions for one inference on the reference utterance of
  :class:`~espnet_prune.targets.CostContext`), which every gated part reports; or
  ``decode`` (seconds of one beam-search decode of that utterance), priced from the
  parts' ``macs`` and their module counts by a latency table (:mod:`.latency`);
* scope: ``blocks`` (the Conformer blocks), ``encoder`` (+ the subsampling front end and
  ``after_norm``) or ``model`` (the whole ASR model: + CTC, decoder, embeddings).
"""

from __future__ import annotations

from typing import Tuple, Union

import torch

Number = Union[int, float, torch.Tensor]

METRICS: Tuple[str, ...] = ("params", "macs")
SCOPES: Tuple[str, ...] = ("blocks", "encoder", "model")
#: metrics a selector derives from a part metric (:mod:`espnet_prune.cost.latency`)
PRICED_METRICS = {"decode": "macs"}


def check_metric(metric: str) -> str:
    """``metric`` if it is one of :data:`METRICS`, else a ValueError naming it."""
    if metric not in METRICS:
        raise ValueError(f"unknown cost metric {metric!r}; choose from {list(METRICS)}")
    return metric


def sparsity(pruned: Number, dense: Number) -> Number:
    """``1 - pruned / dense``."""
    return 1.0 - pruned / dense
