"""What each compared model's training took, whether it converged, and the spread of seeds.

For the report's "pruning or training small?" comparison (:mod:`espnet_prune.recipe.report`):

* **training cost** (``--training NAME=[teacher+]DIR[,DIR...]``): the ESPnet training dirs
  that made model NAME (a pruning run and its fine-tuning, a scratch model's one run, ...).
  Per dir: the epochs it trained (the last ``Nepoch results`` of its ``train.log``), whether
  ESPnet's ``patience`` stopped it (its ``[Early stopping]`` line: converged by the
  config's criterion) or ``max_epoch`` did, its validation accuracy per epoch, and the CPU
  seconds (user + system) and wall seconds ``espnet_prune.bin.asr_train`` recorded in
  ``train_cost.json``, summed over resumed invocations. ``teacher+`` marks a model that
  starts from the teacher: the reference model's (first ``--model``) training is its share.
* **seed spread** (``--seed_group NAME=OTHER[,OTHER...]``): model NAME and its retrainings
  with other seeds (``--model`` names). Per test set: each seed's WER, their mean, sample
  standard deviation and range. Two groups (a ``--pair`` of group leaders) differ by more
  than the seed spread when every seed of one has a lower WER than every seed of the other
  (their ranges do not overlap; with three seeds each that happens by chance with
  probability 1/10 when the two are alike, 1/20 in a given direction).
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

TEACHER = "teacher+"
_EPOCH = re.compile(r"(\d+)epoch results: .*\[valid\](.*)$")
_ACC = re.compile(r"\bacc=([0-9.eE+-]+)")


class TrainingError(ValueError):
    """A bad ``--training`` / ``--seed_group`` value (the message names it)."""


def parse_training(values: Sequence[str], model_names: Sequence[str]
                   ) -> Dict[str, Tuple[bool, List[Path]]]:
    """``["prune=teacher+exp/prune,exp/prune/finetune", ...]`` -> ``{name: (from_teacher, dirs)}``."""
    out: Dict[str, Tuple[bool, List[Path]]] = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not rest:
            raise TrainingError(f"--training {v!r}: expected NAME=[teacher+]DIR[,DIR...]")
        if name not in model_names:
            raise TrainingError(f"--training {v!r}: {name!r} is not one of the --model names")
        if name in out:
            raise TrainingError(f"--training {v!r}: {name!r} given twice")
        teacher = rest.startswith(TEACHER)
        dirs = [Path(d) for d in rest[len(TEACHER) if teacher else 0:].split(",") if d]
        for d in dirs:
            if not (d / "train.log").is_file():
                raise TrainingError(f"--training {v!r}: {d / 'train.log'} not found")
        out[name] = (teacher, dirs)
    return out


def parse_seed_groups(values: Sequence[str], model_names: Sequence[str]) -> Dict[str, List[str]]:
    """``["prune=prune_seed1,prune_seed2"]`` -> ``{"prune": ["prune", "prune_seed1", ...]}``."""
    out: Dict[str, List[str]] = {}
    for v in values:
        name, sep, rest = v.partition("=")
        members = [name] + [m for m in rest.split(",") if m]
        if not sep or len(members) < 2:
            raise TrainingError(f"--seed_group {v!r}: expected NAME=OTHER[,OTHER...]")
        for m in members:
            if m not in model_names:
                raise TrainingError(f"--seed_group {v!r}: {m!r} is not one of the --model names")
        if len(set(members)) != len(members) or name in out:
            raise TrainingError(f"--seed_group {v!r}: a model given twice")
        out[name] = members
    return out


def read_train_dir(d: Path) -> Dict[str, Any]:
    """One training dir: ``epochs``, ``early_stopped``, ``valid_acc`` ([epoch, acc] pairs),
    ``cpu_s`` / ``wall_s`` (None without ``train_cost.json``)."""
    epochs, acc, stopped = 0, {}, False
    for line in (d / "train.log").read_text(encoding="utf-8", errors="replace").splitlines():
        m = _EPOCH.search(line)
        if m:
            epochs = max(epochs, int(m.group(1)))
            a = _ACC.search(m.group(2))
            if a:  # an epoch redone after a resume: its last result
                acc[int(m.group(1))] = float(a.group(1))
        elif "[Early stopping]" in line:
            stopped = True
    out: Dict[str, Any] = {"dir": str(d), "epochs": epochs, "early_stopped": stopped,
                           "valid_acc": [[e, a] for e, a in sorted(acc.items())],
                           "cpu_s": None, "wall_s": None}
    cost = d / "train_cost.json"
    if cost.is_file():
        try:
            runs = json.loads(cost.read_text())
            out["cpu_s"] = float(sum(r["cpu_s"] for r in runs))
            out["wall_s"] = float(sum(r["wall_s"] for r in runs))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise TrainingError(f"{cost}: not a list of {{cpu_s, wall_s}} records ({e})") from None
    return out


def _sum(values: Sequence[Optional[float]]) -> Optional[float]:
    return None if any(v is None for v in values) else float(sum(values))  # type: ignore[arg-type]


def training_costs(entries: Dict[str, Tuple[bool, List[Path]]], reference: str
                   ) -> Dict[str, Dict[str, Any]]:
    """Per model: its dirs (:func:`read_train_dir`), own ``epochs`` / ``cpu_s`` / ``wall_s``,
    ``teacher_cpu_s`` (when it starts from the reference model) and ``total_cpu_s``."""
    dirs = {name: [read_train_dir(d) for d in ds] for name, (_, ds) in entries.items()}
    out: Dict[str, Dict[str, Any]] = {}
    for name, (from_teacher, _) in entries.items():
        runs = dirs[name]
        own_cpu = _sum([r["cpu_s"] for r in runs])
        c: Dict[str, Any] = {"runs": runs, "epochs": sum(r["epochs"] for r in runs),
                             "cpu_s": own_cpu, "wall_s": _sum([r["wall_s"] for r in runs]),
                             "from_teacher": from_teacher}
        if from_teacher:
            if reference not in dirs:
                raise TrainingError(f"--training {name}=teacher+...: the reference model "
                                    f"{reference!r} has no --training entry")
            c["teacher_cpu_s"] = _sum([r["cpu_s"] for r in dirs[reference]])
            c["total_cpu_s"] = _sum([own_cpu, c["teacher_cpu_s"]])
        else:
            c["total_cpu_s"] = own_cpu
        out[name] = c
    return out


def seed_spread(groups: Dict[str, List[str]], rows: Sequence[Dict[str, Any]],
                test_sets: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Per group and set: ``wers`` (one per seed, in group order), ``mean``, ``sd`` (sample),
    ``range`` (max - min), in WER points."""
    wer = {r["name"]: r["wer"] for r in rows}
    out: Dict[str, Dict[str, Any]] = {}
    for name, members in groups.items():
        per_set = {}
        for s in test_sets:
            ws = [float(wer[m][s]["wer"]) for m in members]
            per_set[s] = {"wers": ws, "mean": statistics.fmean(ws), "sd": statistics.stdev(ws),
                          "range": max(ws) - min(ws)}
        out[name] = {"members": members, "sets": per_set}
    return out


def compare_groups(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Per set: ``mean_delta`` (mean WER of ``a`` minus ``b``) and ``exceeds_spread``: every
    seed of one group below every seed of the other."""
    out = {}
    for s, sa in a["sets"].items():
        sb = b["sets"][s]
        separated = max(sa["wers"]) < min(sb["wers"]) or max(sb["wers"]) < min(sa["wers"])
        out[s] = {"mean_delta": sa["mean"] - sb["mean"], "exceeds_spread": separated}
    return out


def report_entries(trainings: Dict[str, Tuple[bool, List[Path]]], groups: Dict[str, List[str]],
                   pairs: Sequence[Tuple[str, str]], rows: Sequence[Dict[str, Any]],
                   test_sets: Sequence[str]) -> Dict[str, Any]:
    """The report's ``training`` (:func:`training_costs`, the first row the reference) and
    ``seeds`` (:func:`seed_spread`, and :func:`compare_groups` for every pair of group
    leaders) entries; each only when asked for."""
    out: Dict[str, Any] = {}
    if trainings:
        out["training"] = training_costs(trainings, rows[0]["name"])
    if groups:
        spread = seed_spread(groups, rows, test_sets)
        out["seeds"] = {"groups": spread, "pairs": [
            {"model": x, "other": y, "sets": compare_groups(spread[x], spread[y])}
            for x, y in pairs if x in spread and y in spread]}
    return out
