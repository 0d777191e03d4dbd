"""The recipe's checks before any stage runs: every problem of a ``run.sh`` call, named, at once.

``run.sh`` calls it once, after its options are parsed and its paths derived::

    python -m espnet_prune.recipe.preflight --stage 5 --stop_stage 9 --prune_targets params:0.5 \\
        --exp exp/mini --baseline exp/mini/asr_baseline ...   (every option below)

It checks, in this order, and prints each problem as one line ``error: ...`` (exit status 1);
without a problem it prints the pruning runs of stage 5, one line each, ``TAG KIND:VALUE...``
(:func:`pruning_runs`: one run per target, or one run for a whole family):

* the options themselves: a family (``--family true``) of at least two distinct targets of
  one kind, and no ``--decode_bound`` or ``--seeds`` with it; distinct whole ``--seeds`` for
  ``--seed_targets`` among ``--prune_targets``; whole numbers (``--stage``, ``--stop_stage``, ``--nj``, ``--ngpu``,
  ``--num_nodes``, ``--train_jobs``), ``--control`` true/false, the ``--baselines`` names,
  every ``--prune_targets`` entry (kind and value, as ``model_conf.target`` will), the
  ``cmd_backend`` of ``cmd.sh`` and multi-node training only through Slurm;
* the configs of the stages that run, and that the pruning config holds pruning options only;
* what the first stage that runs needs from the stages before it (``made by stage N``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

BASELINES = ("scratch", "magnitude", "layerdrop")


def _whole(value: str) -> bool:
    return re.fullmatch(r"[0-9]+", value) is not None


def option_problems(a: argparse.Namespace) -> List[str]:
    """Problems of the option values alone."""
    from espnet_prune.target_kinds import parse_target

    problems = []
    for spec in a.prune_targets:
        kind, _, value = spec.partition(":")
        try:
            parse_target({kind: value})
        except ValueError as e:
            problems.append(f"--prune_targets {spec}: {e}")
    problems += [f"unknown --baselines entry '{b}' ({', '.join(BASELINES)})"
                 for b in a.baselines if b not in BASELINES]
    if a.family not in ("true", "false"):
        problems.append(f"--family must be true or false, got '{a.family}'")
    elif a.family == "true":
        kinds = {spec.partition(":")[0] for spec in a.prune_targets}
        if len(set(a.prune_targets)) < 2 or len(set(a.prune_targets)) != len(a.prune_targets) or len(kinds) != 1:
            problems.append(f"--family true needs two or more distinct --prune_targets of one kind, "
                            f"got {' '.join(a.prune_targets) or 'none'}")
    if a.decode_bound:
        try:
            parse_target({"decode": a.decode_bound}, "--decode_bound")
        except ValueError as e:
            problems.append(str(e).replace("--decode_bound.decode", "--decode_bound"))
        if a.family == "true":
            problems.append("--decode_bound holds one target's decode cost; a family has no bound")
    if a.seeds:
        problems += [f"--seeds {seed}: not a whole number" for seed in a.seeds if not _whole(seed)]
        if len(set(a.seeds)) != len(a.seeds):
            problems.append(f"--seeds {' '.join(a.seeds)}: a seed given twice")
        if a.family == "true":
            problems.append("--seeds trains separately pruned models again; with --family true there are none")
        problems += [f"--seed_targets {spec}: not one of --prune_targets ({' '.join(a.prune_targets)})"
                     for spec in a.seed_targets if spec not in a.prune_targets]
    if a.latency_set and a.latency_set not in a.test_sets:
        problems.append(f"--latency_set {a.latency_set}: not one of --test_sets ({' '.join(a.test_sets)})")
    if not re.fullmatch(r"[1-9][0-9]*", a.train_jobs):
        problems.append(f"--train_jobs must be a positive integer, got '{a.train_jobs}'")
    if a.control not in ("true", "false"):
        problems.append(f"--control must be true or false, got '{a.control}'")
    for name in ("stage", "stop_stage", "nj", "ngpu"):
        if not _whole(getattr(a, name)):
            problems.append(f"--{name} {getattr(a, name)}: not a whole number")
    if not re.fullmatch(r"[1-9][0-9]*", a.num_nodes):
        problems.append(f"--num_nodes {a.num_nodes}: must be a whole number >= 1")
    elif int(a.num_nodes) > 1 and a.cmd_backend != "slurm":
        problems.append(f"--num_nodes {a.num_nodes}: multi-node training needs cmd_backend=slurm "
                        f"(now '{a.cmd_backend}', see cmd.sh)")
    if a.cmd_backend not in ("local", "slurm"):
        problems.append(f"cmd_backend={a.cmd_backend}: must be local or slurm (cmd.sh)")
    return problems


def input_problems(a: argparse.Namespace) -> List[str]:
    """Missing configs and missing outputs of earlier stages, for the stages that run."""
    from espnet_prune.recipe.teacher import TeacherError, check_prune_options, load_config

    stage, stop = int(a.stage), int(a.stop_stage)
    control = a.control == "true"
    problems: List[str] = []

    def runs(n: int) -> bool:
        return stage <= n <= stop

    def need(path: str, why: str) -> None:
        if not Path(path).exists():
            problems.append(f"{path}: not found ({why})")

    if (a.fbank and runs(4)) or (control and runs(5)) or ("scratch" in a.baselines and runs(7)):
        need(a.train_config, "--train_config")
    if runs(5):
        need(a.prune_config, "--prune_config")
        if Path(a.prune_config).exists():  # pruning options only: the architecture comes from the teacher
            try:
                conf = load_config(Path(a.prune_config))
                check_prune_options(conf, where=a.prune_config)
            except TeacherError as e:
                problems.append(str(e))
            else:
                table = (conf.get("model_conf") or {}).get("latency_table")
                if a.decode_bound and not table:
                    problems.append(f"--decode_bound {a.decode_bound}: {a.prune_config} has no "
                                    "model_conf.latency_table (python -m espnet_prune.bin.latency measures one)")
                elif isinstance(table, str):
                    need(table, f"model_conf.latency_table of {a.prune_config}")
    if (runs(6) and a.finetune == "true") or (control and runs(5)) or (a.baselines and runs(7)):
        need(a.finetune_config, "--finetune_config")
    if runs(8) or runs(9):
        need(a.inference_config, "--inference_config")
    if not (stage >= 2 and stop >= stage):
        return problems
    first = stage
    if a.fbank:
        if first == 2:
            for s in [a.train_set, a.valid_set] + a.test_sets:
                need(f"{a.data}/{s}/wav.scp", "made by stage 1")
        if first == 3:
            need(f"{a.train_dump}/text", "made by stage 2")
        if 4 <= first <= 8:
            need(f"{a.train_dump}/feats.scp", "made by stage 2")
            need(a.bpemodel, "made by stage 3")
        if first >= 5:
            need(f"{a.baseline}/final/model.pth", "the baseline, made by stage 4")
    tags = [spec.replace(":", "", 1) for spec in a.prune_targets]
    for tag, _ in pruning_runs(a.prune_targets, a.family == "true"):
        if first == 6:
            need(f"{a.exp}/prune_{tag}/final_gated/model.pth", "made by stage 5")
    for tag in tags:
        if first >= 7:
            member = "family" if a.family == "true" else "prune"
            need(f"{a.exp}/{member}_{tag}/final/model.pth", "made by stage 6")
    if first >= 8 and control:
        need(f"{a.control_dir}/final/model.pth", "the control, made by stage 5")
    for tag in tags:
        for b in a.baselines:
            if first >= 8:
                need(f"{a.exp}/{b}_{tag}/final/model.pth", "made by stage 7")
    return problems


def pruning_runs(targets: Sequence[str], family: bool) -> List[Tuple[str, List[str]]]:
    """Stage 5's pruning runs, ``(tag, targets)`` each, the run in ``exp/prune_<tag>``: one per
    target (tag ``params0.5`` for ``params:0.5``), or one for a family, tagged with its kind and
    its values in increasing order (``params0.3_0.5_0.7``)."""
    if not family:
        return [(spec.replace(":", "", 1), [spec]) for spec in targets]
    ordered = sorted(targets, key=lambda spec: float(spec.partition(":")[2]))
    kind = ordered[0].partition(":")[0]
    return [(kind + "_".join(spec.partition(":")[2] for spec in ordered), ordered)]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("stage", "stop_stage", "nj", "ngpu", "num_nodes", "train_jobs", "control", "family",
                 "finetune", "cmd_backend", "train_config", "prune_config", "finetune_config",
                 "inference_config", "data", "train_set", "valid_set", "train_dump", "bpemodel",
                 "baseline", "exp", "control_dir"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--fbank", choices=("true", "false"), required=True,
                   help="our features and tokens (stages 2-4); false with an imported teacher")
    p.add_argument("--prune_targets", nargs="*", default=[], help="KIND:VALUE entries")
    p.add_argument("--decode_bound", default="", help="the decode bound of every pruning run, or ''")
    p.add_argument("--baselines", nargs="*", default=[])
    p.add_argument("--seeds", nargs="*", default=[], help="more training seeds of the --seed_targets")
    p.add_argument("--seed_targets", nargs="*", default=[], help="KIND:VALUE entries of --prune_targets")
    p.add_argument("--test_sets", nargs="*", default=[])
    p.add_argument("--latency_set", default="", help="the test set the report times, or ''")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    # stdout carries the pruning runs only: whatever the checks' imports print goes to stderr
    # (ESPnet prints "Failed to import Flash Attention ..." to stdout)
    runs_out, sys.stdout = sys.stdout, sys.stderr
    try:
        return _main(argv, runs_out)
    finally:
        sys.stdout = runs_out


def _main(argv: Optional[Sequence[str]], runs_out) -> int:
    a = get_parser().parse_args(argv)
    a.fbank = a.fbank == "true"
    problems = option_problems(a)
    if not problems:  # the paths are only meaningful for valid options
        problems = input_problems(a)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    for tag, targets in pruning_runs(a.prune_targets, a.family == "true"):
        print(tag, *targets, file=runs_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
