"""Training curves from an ESPnet ``train.log``.

ESPnet's trainer logs every ``log_interval`` updates one line like::

    [host] 2026-11-26 22:37:50,400 (trainer:811) INFO: 8epoch:train:31-40batch: iter_time=0.014,
        ..., expected_sparsity=0.512, target_sparsity=0.500, ..., lambda1=-2.968, lambda2=4.533

(the averages of the reported values over batches 31-40 of epoch 8) and at the end of
every epoch ``Nepoch results: [train] ..., total_count=K, [valid] ...`` where ``K`` is the
number of training updates since the start of training (the reporter's count, restored
on resume).

:func:`parse_train_log` turns the interval lines into arrays against the **training
step** (updates since the start) at the end of each interval: ``offset(epoch) + B`` for
``A-Bbatch``, ``offset(epoch)`` being the previous epoch's ``total_count``. When that line
is missing (a log cut short, or epochs logged elsewhere) the offset is the previous
offset plus the previous epoch's length, taken from its ``total_count`` difference, else
from its last logged batch (which undercounts by less than ``log_interval``).

Parsing is tolerant: ``key=value`` pairs are found by pattern, so pairs glued together
without the ``", "`` separator (``target_sparsity=0.108eval_sparsity=0.500``, which
concurrent writers produce) still parse; values that are not numbers are skipped. A
repeated ``(epoch, batch range)`` (training resumed inside an epoch and re-logged it)
keeps the last occurrence.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from espnet_prune.recipe.options import parse_named_paths

PathLike = Union[str, "os.PathLike[str]"]

#: The values the pruning plots need (a family's run has no multipliers: ``gate_shift`` instead).
PRUNING_KEYS = ("expected_sparsity", "target_sparsity")

_INTERVAL_RE = re.compile(r"\b(\d+)epoch:train:(\d+)-(\d+)batch:(.*)$")
_RESULTS_RE = re.compile(r"\b(\d+)epoch results:\s*\[train\](.*?)(?:\[valid\]|$)")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
_PAIR_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(" + _NUMBER + r")")


def parse_pairs(text: str) -> Dict[str, float]:
    """Every ``key=number`` in ``text`` (later duplicates win)."""
    return {k: float(v) for k, v in _PAIR_RE.findall(text)}


@dataclass
class TrainCurve:
    """Interval averages of one training run, in log order by step.

    Attributes:
        path: the log file.
        steps: (n,) int64, training updates since the start at the end of each interval.
        epochs: (n,) int64, epoch of each interval (1-based).
        values: key -> (n,) float64 (nan where an interval did not report the key).
        approximate_steps: True when some epoch offset had to be estimated (no
            ``total_count`` for the previous epoch).
    """

    path: str
    steps: np.ndarray
    epochs: np.ndarray
    values: Dict[str, np.ndarray] = field(default_factory=dict)
    approximate_steps: bool = False

    def get(self, key: str) -> np.ndarray:
        """Values of ``key``; KeyError naming the log and the keys it has."""
        if key not in self.values:
            raise KeyError(f"{self.path}: no '{key}=' in the training intervals "
                           f"(keys: {', '.join(sorted(self.values)) or 'none'})")
        return self.values[key]


def _epoch_offsets(epochs: Sequence[int], last_batch: Dict[int, int],
                   totals: Dict[int, int]) -> Tuple[Dict[int, int], bool]:
    """Updates before each epoch in ``epochs`` (see the module docstring)."""
    known = {e: totals[e] - (totals[e - 1] if e > 1 else 0)
             for e in totals if e == 1 or e - 1 in totals}
    typical = max(list(known.values()) + list(last_batch.values()) + [0])

    def length(e: int) -> Tuple[int, bool]:
        if e in known:
            return known[e], False
        if e in last_batch:
            return last_batch[e], True
        return typical, True

    seen = set(epochs)
    offsets: Dict[int, int] = {}
    approx = estimated = False  # estimated: the running offset holds an estimate
    offset = 0
    for e in range(1, max(epochs) + 1):
        if e > 1:
            if e - 1 in totals:
                offset, estimated = totals[e - 1], False
            else:
                n, est = length(e - 1)
                offset, estimated = offset + n, estimated or est
        offsets[e] = offset
        approx = approx or (estimated and e in seen)
    return offsets, approx


def parse_train_log(path: PathLike, required: Sequence[str] = ()) -> TrainCurve:
    """Read the training intervals of an ESPnet ``train.log``.

    Args:
        path: the log.
        required: keys that must appear in at least one interval.

    Raises:
        FileNotFoundError: no such file. ValueError: no ``Nepoch:train:A-Bbatch:`` line,
            or a required key never appears (the message names the file and key).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"training log not found: {p}")
    intervals: Dict[Tuple[int, int], Dict[str, float]] = {}
    totals: Dict[int, int] = {}
    with p.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _INTERVAL_RE.search(line)
            if m:
                epoch, end = int(m.group(1)), int(m.group(3))
                intervals.pop((epoch, end), None)  # re-logged: keep the last, in log order
                intervals[(epoch, end)] = parse_pairs(m.group(4))
                continue
            m = _RESULTS_RE.search(line)
            if m:
                count = parse_pairs(m.group(2)).get("total_count")
                if count is not None:
                    totals[int(m.group(1))] = int(count)
    if not intervals:
        raise ValueError(f"{p}: no training interval lines ('<N>epoch:train:<A>-<B>batch: "
                         "key=value, ...'); is this an ESPnet train.log?")
    keys_ordered = sorted(intervals)  # by (epoch, end batch)
    last_batch: Dict[int, int] = {}
    for e, end in keys_ordered:
        last_batch[e] = max(last_batch.get(e, 0), end)
    offsets, approx = _epoch_offsets([e for e, _ in keys_ordered], last_batch, totals)
    steps = np.array([offsets[e] + end for e, end in keys_ordered], dtype=np.int64)
    epochs = np.array([e for e, _ in keys_ordered], dtype=np.int64)
    names: List[str] = []
    for k in keys_ordered:
        names += [n for n in intervals[k] if n not in names]
    values = {n: np.array([intervals[k].get(n, np.nan) for k in keys_ordered], dtype=np.float64)
              for n in names}
    curve = TrainCurve(path=str(p), steps=steps, epochs=epochs, values=values,
                       approximate_steps=approx)
    for key in required:
        if key not in values or np.isnan(values[key]).all():
            raise ValueError(f"{p}: no '{key}=' in any training interval (keys found: "
                             f"{', '.join(names)}); a pruning run's train.log is needed")
    return curve


def parse_named_logs(specs: Sequence[str], option: str = "--train_log"
                     ) -> List[Tuple[str, Path]]:
    """``NAME=PATH`` options -> ``[(name, path)]`` (names unique, files present)."""
    out = parse_named_paths(specs, option)
    for name, path in out:
        if not path.is_file():
            raise FileNotFoundError(f"{option} {name}: training log not found: {path}")
    return out
