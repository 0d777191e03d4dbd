"""ESPnet's ``asr_train`` with the pruning task: every ``espnet2.bin.asr_train`` option works.

    # dense baseline (teacher), a stock ESPnet Conformer config
    python -m espnet_prune.bin.asr_train --config conf/train_asr_conformer.yaml ...
    # pruning run: model prune_espnet + encoder gated_conformer; the config is the teacher's
    # architecture merged with the pruning options (espnet_prune.recipe.teacher prune_config)
    python -m espnet_prune.bin.asr_train --config exp/prune_params0.5/prune_config.yaml ...

Every invocation that trains (not ``--collect_stats``) appends what it cost to
``<output_dir>/train_cost.json`` (:data:`COST_FILE`): wall and CPU seconds (user + system, of
this process and the children it waited for), so a resumed run adds up its parts. The entry
is rewritten every :data:`COST_INTERVAL_S` seconds while training runs and once at the end: a
run stopped by SIGTERM (``kill``, a batch system's time limit) records its part, and one
killed outright (SIGKILL, the end of a session) keeps all but its last interval.
"""

import json
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from espnet_prune.bin import option_value
from espnet_prune.fileio import atomic_write_text

COST_FILE = "train_cost.json"
COST_INTERVAL_S = 60.0  # seconds between rewrites of a running invocation's cost entry


def _cpu_seconds() -> float:
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF,
               resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))


def record_cost(output_dir: Path, wall_s: float, cpu_s: float, ok: bool,
                index: Optional[int] = None) -> List[Dict[str, object]]:
    """Write one invocation's entry of ``output_dir/train_cost.json`` (a JSON list, rewritten
    atomically): appended, or in place of entry ``index`` (the one this invocation wrote
    before). Returns the list."""
    path = Path(output_dir) / COST_FILE
    try:
        runs = json.loads(path.read_text()) if path.is_file() else []
    except json.JSONDecodeError:
        runs = []
    if not isinstance(runs, list):
        runs = []
    entry = {"wall_s": round(wall_s, 2), "cpu_s": round(cpu_s, 2), "completed": ok}
    if index is not None and 0 <= index < len(runs):
        runs[index] = entry
    else:
        runs.append(entry)
    atomic_write_text(path, json.dumps(runs, indent=1) + "\n")
    return runs


class CostLog:
    """This invocation's entry of ``output_dir/train_cost.json``, kept current by a daemon
    thread (every ``interval_s`` seconds, once ESPnet has created ``output_dir``) and
    written a last time by :meth:`finish`."""

    def __init__(self, output_dir: Path, interval_s: float) -> None:
        self.output_dir = Path(output_dir)
        self.interval_s = interval_s
        self.t0, self.c0 = time.time(), _cpu_seconds()
        self.index: Optional[int] = None  # this invocation's entry, once written
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="train-cost", daemon=True)

    def write(self, ok: bool = False) -> None:
        with self._lock:
            if not self.output_dir.is_dir():
                return
            runs = record_cost(self.output_dir, time.time() - self.t0, _cpu_seconds() - self.c0,
                               ok, self.index)
            if self.index is None:
                self.index = len(runs) - 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write()

    def start(self) -> "CostLog":
        self._thread.start()
        return self

    def finish(self, ok: bool) -> None:
        self._stop.set()
        self._thread.join()
        self.write(ok)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the finally blocks that Python's default action skips


def main(cmd: Optional[List[str]] = None) -> None:
    from espnet_prune.task import PruneASRTask

    argv = sys.argv[1:] if cmd is None else cmd
    output_dir = option_value(argv, "--output_dir")
    counted = output_dir is not None and option_value(argv, "--collect_stats") not in ("true", "True")
    if counted and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    cost = CostLog(Path(output_dir), COST_INTERVAL_S).start() if counted else None
    ok = False
    try:
        PruneASRTask.main(cmd=cmd)
        ok = True
    finally:
        if cost is not None:
            cost.finish(ok)


if __name__ == "__main__":
    main()
