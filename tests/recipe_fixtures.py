"""What the recipe tests share: a copy of the recipe dir, running ``run.sh``, file snapshots,
one tiny synthetic corpus, and the two long recipe runs.

The long runs (``test_recipe``'s whole recipe, ``test_teacher_recipe``'s ESPnet-trained teacher
pruned by ``run.sh --stage 5``) are mostly process start-up and single-process stages; they
start in the background when the first test of a module using this plugin is set up, so that
they share the cores with each other and with the tests that run meanwhile, and a test that
needs one waits for it. Only the runs the selected tests use are started; one still running
at the end of the session (e.g. after ``-x``) is stopped. Under pytest-xdist (``make test``)
a run starts when the first test that needs it is set up, in that test's worker: the other
worker keeps the second core busy meanwhile.

A test module loads this module as a plugin, ``pytest_plugins = ["recipe_fixtures"]``: a
session-scoped fixture then runs once however many modules use it (a fixture imported into
two modules would run once per module). ``python tests/recipe_fixtures.py teacher ROOT CORPUS``
is the teacher run, one background process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest

from espnet_prune.data import mini_corpus as mc

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2/librispeech_prune/asr1"

#: The shared corpus: 24 / 6 / 6 utterances, 4 / 2 / 2 speakers.
TINY = mc.CorpusConfig(n_train=24, n_dev=6, n_test=6, seed=3, n_train_speakers=4,
                       n_dev_speakers=2, n_test_speakers=2)

#: test_recipe's run: every stage, the three same-size baselines, a second seed of the pruned
#: and scratch models, one decoded set (test; decoding dev too runs the same code on other files).
RECIPE_ARGS = [
    "--dataset", "mini", "--conf_dir", "conf/smoke", "--nj", "2", "--vocab_size", "30",
    "--mini_n_train", "64", "--mini_n_dev", "8", "--mini_n_test", "8", "--latency_utts", "2",
    "--baselines", "scratch magnitude layerdrop", "--test_sets", "test", "--seeds", "1",
]
#: Longest a background run may take (the recipe run: about 4 min on a quiet 2-core machine,
#: over 25 min on one loaded 4 times over).
RUN_TIMEOUT = 3600


def recipe_dir(work: Path) -> Path:
    """A copy of the recipe's scripts in ``work`` (conf linked to the repository's)."""
    work.mkdir(parents=True, exist_ok=True)
    for name in ("run.sh", "path.sh", "cmd.sh", "db.sh"):
        shutil.copy(RECIPE / name, work / name)
    shutil.copytree(RECIPE / "local", work / "local")
    (work / "conf").symlink_to(REPO / "conf")
    return work


def _env() -> Dict[str, str]:
    return dict(os.environ, MAIN_ROOT=str(REPO), OMP_NUM_THREADS="1",
                PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def run_recipe(work: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """``run.sh ARGS`` in ``work`` (one OpenMP thread per process unless run.sh says otherwise)."""
    return subprocess.run(["bash", "./run.sh", *args], cwd=work, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def snapshot(root: Path) -> Dict[str, int]:
    """Relative path -> mtime (ns) of every file under ``root``."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def have_tts() -> bool:
    """Is an eSpeak NG backend available (to synthesise a corpus)?"""
    try:
        mc.get_synthesizer("auto")
    except mc.SynthesisUnavailable:
        return False
    return True


# --------------------------------------------------------------------------- background runs


@dataclass
class Finished:
    """A finished background run: ``work`` is its recipe dir."""

    work: Path
    returncode: int
    stdout: str
    stderr: str


class Background:
    """A command started in its own process group, output to ``ROOT/run.{stdout,stderr}``."""

    def __init__(self, cmd: List[str], cwd: Path, root: Path, work: Path) -> None:
        self.root, self.work = root, work
        with open(root / "run.stdout", "w") as out, open(root / "run.stderr", "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=out, stderr=err,
                                         start_new_session=True)

    def wait(self) -> Finished:
        try:
            rc = self.proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        return Finished(self.work, rc, (self.root / "run.stdout").read_text(),
                        (self.root / "run.stderr").read_text())

    def stop(self) -> None:
        """Stop the run and everything it started, if it is still running."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait()


def start_recipe(root: Path) -> Background:
    """test_recipe's run (:data:`RECIPE_ARGS`) in ``ROOT/asr1``."""
    work = recipe_dir(root / "asr1")
    return Background(["bash", "./run.sh", *RECIPE_ARGS], work, root, work)


def start_teacher(root: Path, corpus: Path) -> Background:
    """test_teacher_recipe's run (:func:`teacher_main`) in ``ROOT``."""
    return Background([sys.executable, __file__, "teacher", str(root), str(corpus)], root, root,
                      root / "asr1")


def teacher_main(root: Path, corpus: Path) -> int:
    """Train a tiny teacher with ESPnet's own tools on ``corpus`` (raw audio, ESPnet's data dir
    layout) in ``ROOT/espnet_recipe``, snapshot the user's files, then prune it with
    ``run.sh --teacher_config ... --stage 5`` in ``ROOT/asr1``; ``ROOT/result.json`` says how."""
    from espnet_teacher import train_teacher

    recipe = root / "espnet_recipe"
    teacher = train_teacher(corpus, recipe, epochs=3, size="tiny")
    user_files = {**snapshot(corpus), **{f"r/{k}": v for k, v in snapshot(recipe).items()}}
    args = ["--conf_dir", "conf/smoke", "--nj", "2", "--latency_utts", "2",
            "--teacher_config", str(recipe / teacher["config"]),
            "--teacher_model", str(recipe / teacher["model"]),
            "--data_format", "raw", "--dump_dir", str(corpus), "--test_sets", "test"]
    (root / "result.json").write_text(json.dumps(dict(
        teacher={k: str(v) for k, v in teacher.items()}, args=args, user_files=user_files)))
    work = recipe_dir(root / "asr1")
    sys.stdout.flush()
    return subprocess.run(["bash", "./run.sh", *args, "--stage", "5"], cwd=work, env=_env(),
                          timeout=RUN_TIMEOUT).returncode


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The :data:`TINY` corpus (Kaldi dirs ``train``, ``dev``, ``test``); tests must not change it."""
    if not have_tts():
        pytest.skip("no eSpeak NG backend")
    out = tmp_path_factory.mktemp("tiny") / "corpus"
    res = mc.make_corpus(out, TINY, nj=2, log=lambda s: None)
    assert res["synthesised"] == 36 and not res["skipped"]
    return out


@pytest.fixture(scope="session", autouse=True)
def _recipe_runs(request, tmp_path_factory):
    """Starts the long runs the selected tests use (see the module's docstring)."""
    wanted = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    if os.environ.get("PYTEST_XDIST_WORKER"):
        wanted = set()  # every worker collects every test: the worker that needs a run starts it
    runs: Dict[str, Background] = {}
    if "recipe_run" in wanted:
        runs["recipe"] = start_recipe(tmp_path_factory.mktemp("recipe"))
    if "teacher_run" in wanted and have_tts():
        try:
            corpus = request.getfixturevalue("tiny_corpus")
        except Exception:  # noqa: BLE001 - reported to the tests that use the corpus, not here
            corpus = None
        if corpus is not None:
            runs["teacher"] = start_teacher(tmp_path_factory.mktemp("teacher"), corpus)
    yield runs
    for run in runs.values():
        run.stop()


@pytest.fixture(scope="session")
def recipe_run(_recipe_runs, tmp_path_factory) -> Finished:
    """test_recipe's run, finished."""
    if "recipe" not in _recipe_runs:
        _recipe_runs["recipe"] = start_recipe(tmp_path_factory.mktemp("recipe"))
    return _recipe_runs["recipe"].wait()


@pytest.fixture(scope="session")
def teacher_run(_recipe_runs, tmp_path_factory, tiny_corpus) -> Finished:
    """test_teacher_recipe's run, finished (``work.parent / "result.json"`` describes it)."""
    if "teacher" not in _recipe_runs:
        _recipe_runs["teacher"] = start_teacher(tmp_path_factory.mktemp("teacher"), tiny_corpus)
    return _recipe_runs["teacher"].wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["teacher"] and len(sys.argv) == 4:
        sys.exit(teacher_main(Path(sys.argv[2]), Path(sys.argv[3])))
    sys.exit(f"usage: python {sys.argv[0]} teacher ROOT CORPUS")
