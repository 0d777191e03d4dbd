"""What the recipe and corpus tests share: a copy of the recipe dir, running ``run.sh``, file
snapshots, and one tiny synthetic corpus for the whole session.

A test module loads it as a plugin, ``pytest_plugins = ["recipe_fixtures"]``, so that a
session-scoped fixture runs once however many modules use it (a fixture imported into two
modules would run once per module).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from espnet_prune.data import mini_corpus as mc

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2/librispeech_prune/asr1"

#: The shared corpus: 24 / 6 / 6 utterances, 4 / 2 / 2 speakers.
TINY = mc.CorpusConfig(n_train=24, n_dev=6, n_test=6, seed=3, n_train_speakers=4,
                       n_dev_speakers=2, n_test_speakers=2)


def recipe_dir(work: Path) -> Path:
    """A copy of the recipe's scripts in ``work`` (conf linked to the repository's)."""
    work.mkdir(parents=True, exist_ok=True)
    for name in ("run.sh", "path.sh", "cmd.sh", "db.sh"):
        shutil.copy(RECIPE / name, work / name)
    shutil.copytree(RECIPE / "local", work / "local")
    (work / "conf").symlink_to(REPO / "conf")
    return work


def run_recipe(work: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """``run.sh ARGS`` in ``work`` (one OpenMP thread per process unless run.sh says otherwise)."""
    env = dict(os.environ, MAIN_ROOT=str(REPO), OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(["bash", "./run.sh", *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=timeout)


def snapshot(root: Path) -> Dict[str, int]:
    """Relative path -> mtime (ns) of every file under ``root``."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The :data:`TINY` corpus (Kaldi dirs ``train``, ``dev``, ``test``); tests must not change it."""
    try:
        mc.get_synthesizer("auto")
    except mc.SynthesisUnavailable:
        pytest.skip("no eSpeak NG backend")
    out = tmp_path_factory.mktemp("tiny") / "corpus"
    res = mc.make_corpus(out, TINY, nj=2, log=lambda s: None)
    assert res["synthesised"] == 36 and not res["skipped"]
    return out
