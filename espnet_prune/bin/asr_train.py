"""ESPnet's ``asr_train`` with the pruning task: every ``espnet2.bin.asr_train`` option works.

    # dense baseline (teacher), a stock ESPnet Conformer config
    python -m espnet_prune.bin.asr_train --config conf/train_asr_conformer.yaml ...
    # pruning run: model prune_espnet + encoder gated_conformer; the config is the teacher's
    # architecture merged with the pruning options (espnet_prune.recipe.teacher prune_config)
    python -m espnet_prune.bin.asr_train --config exp/prune_params0.5/prune_config.yaml ...

Every invocation that trains (not ``--collect_stats``) appends what it cost to
``<output_dir>/train_cost.json`` (:data:`COST_FILE`): wall and CPU seconds (user + system, of
this process and the children it waited for), so a resumed run adds up its parts. A run
stopped by SIGTERM (``kill``, a batch system's time limit) records its part too.
"""

import json
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from espnet_prune.bin import option_value

COST_FILE = "train_cost.json"


def _cpu_seconds() -> float:
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF,
               resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))


def record_cost(output_dir: Path, wall_s: float, cpu_s: float, ok: bool) -> List[Dict[str, object]]:
    """Append one invocation to ``output_dir/train_cost.json`` (a JSON list, rewritten
    atomically); returns the list."""
    from espnet_prune.fileio import atomic_write_text

    path = Path(output_dir) / COST_FILE
    try:
        runs = json.loads(path.read_text()) if path.is_file() else []
    except json.JSONDecodeError:
        runs = []
    if not isinstance(runs, list):
        runs = []
    runs.append({"wall_s": round(wall_s, 2), "cpu_s": round(cpu_s, 2), "completed": ok})
    atomic_write_text(path, json.dumps(runs, indent=1) + "\n")
    return runs


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the finally blocks that Python's default action skips


def main(cmd: Optional[List[str]] = None) -> None:
    from espnet_prune.task import PruneASRTask

    argv = sys.argv[1:] if cmd is None else cmd
    output_dir = option_value(argv, "--output_dir")
    counted = output_dir is not None and option_value(argv, "--collect_stats") not in ("true", "True")
    if counted and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    t0, c0 = time.time(), _cpu_seconds()
    ok = False
    try:
        PruneASRTask.main(cmd=cmd)
        ok = True
    finally:
        if counted and Path(output_dir).is_dir():
            record_cost(Path(output_dir), time.time() - t0, _cpu_seconds() - c0, ok)


if __name__ == "__main__":
    main()
