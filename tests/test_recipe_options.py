"""run.sh's option checks, distributed-training options and failed-training clean-up,
without running a real stage.

Training jobs go to a fake ``srun`` (cmd_backend=slurm) that records its arguments
and fails, as a job that dies at start-up does. The recorded ESPnet command is then
checked with ESPnet's own ``resolve_distributed_mode`` under the environment that
Slurm gives the task of each node.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2/librispeech_prune/asr1"
SMOKE = ["--dataset", "mini", "--conf_dir", "conf/smoke", "--vocab_size", "30"]

FAKE_SRUN = """#!/usr/bin/env bash
# records its arguments, one per line, then fails like a job that dies at start-up
printf '%s\\n' "$@" > "$SRUN_RECORD"
exit 3
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    for name in ("run.sh", "path.sh", "cmd.sh", "db.sh"):
        shutil.copy(RECIPE / name, tmp_path / name)
    shutil.copytree(RECIPE / "local", tmp_path / "local")
    (tmp_path / "conf").symlink_to(RECIPE / "conf")
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    return tmp_path


def run_recipe(work: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(work / "fakebin"), os.path.dirname(sys.executable), os.environ["PATH"]])
    full_env = {k: v for k, v in os.environ.items() if k not in ("cmd_backend", "slurm_opts")}
    full_env.update(MAIN_ROOT=str(REPO), OMP_NUM_THREADS="1", PATH=path, SRUN_RECORD=str(work / "srun.args"))
    full_env.update(env)
    return subprocess.run(["bash", "./run.sh", *SMOKE, *args], cwd=work, env=full_env,
                          capture_output=True, text=True, timeout=300)


def fake_stage3_outputs(work: Path) -> None:
    """The files stage 4 reads (empty: the fake srun never opens them)."""
    for f in ("dump/mini/fbank/train_filt/feats.scp", "data/mini/token_list/unigram30/bpe.model"):
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        (work / f).write_text("")


@pytest.mark.parametrize("args, env, message", [
    (["--num_nodes", "2"], {}, "--num_nodes 2: multi-node training needs cmd_backend=slurm"),
    (["--ngpu", "two"], {}, "--ngpu two: not a whole number"),
    (["--num_nodes", "0"], {"cmd_backend": "slurm"}, "--num_nodes 0: must be a whole number >= 1"),
    ([], {"cmd_backend": "pbs"}, "cmd_backend=pbs: must be local or slurm"),
    (["--stage", "4", "--train_config", "conf/none.yaml"], {}, "conf/none.yaml: not found (--train_config)"),
    (["--stage", "5"], {}, "exp/mini/asr_baseline/final/model.pth: not found (the baseline, made by stage 4)"),
    (["--stage", "4"], {}, "dump/mini/fbank/train_filt/feats.scp: not found (made by stage 2)"),
    (["--stage", "7", "--prune_targets", "0.3"], {}, "exp/mini/prune_params0.3/final/model.pth: not found"),
    (["--prune_targets", "0.5", "--family", "true"], {},
     "--family true needs two or more distinct --prune_targets of one kind, got params:0.5"),
    (["--prune_targets", "0.5 macs:0.3", "--family", "true"], {}, "--family true needs two or more"),
    (["--stage", "6", "--prune_targets", "0.3 0.5 0.7", "--family", "true"], {},
     "exp/mini/prune_params0.3_0.5_0.7/final_gated/model.pth: not found (made by stage 5)"),
    (["--stage", "7", "--prune_targets", "0.3 0.7", "--family", "true"], {},
     "exp/mini/family_params0.7/final/model.pth: not found (made by stage 6)"),
    (["--decode_bound", "1.5"], {}, "--decode_bound=1.5 must be in [0, 1)"),
    (["--prune_targets", "0.3 0.5", "--family", "true", "--decode_bound", "0.4"], {},
     "--decode_bound holds one target's decode cost; a family has no bound"),
    (["--stage", "5", "--decode_bound", "0.4"], {},
     "--decode_bound 0.4: conf/smoke/prune_asr_conformer.yaml has no model_conf.latency_table"),
    (["--seeds", "1 x"], {}, "--seeds x: not a whole number"),
    (["--seeds", "1 1"], {}, "--seeds 1 1: a seed given twice"),
    (["--seeds", "1", "--seed_targets", "0.3"], {},
     "--seed_targets params:0.3: not one of --prune_targets (params:0.5)"),
    (["--latency_set", "ood"], {}, "--latency_set ood: not one of --test_sets (dev test)"),
    (["--prune_targets", "0.3 0.5", "--family", "true", "--seeds", "1"], {},
     "--seeds trains separately pruned models again; with --family true there are none"),
    (["--stage", "5", "--prune_config", "conf/smoke/train_asr_conformer.yaml"], {},
     "conf/smoke/train_asr_conformer.yaml: encoder_conf.output_size: the architecture comes from the teacher"),
])
def test_bad_options_fail_before_any_stage(work, args, env, message):
    proc = run_recipe(work, *args, **env)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "===== Stage" not in proc.stderr
    assert not (work / "exp").exists() and not (work / "data").exists()


def _recorded(work: Path) -> List[str]:
    return (work / "srun.args").read_text().splitlines()


def _espnet_command(srun_args: List[str]) -> List[str]:
    """The asr_train options inside the recorded ``srun ... bash -c CMD``."""
    cmd = shlex.split(srun_args[srun_args.index("-c") + 1])
    i = cmd.index("espnet_prune.bin.asr_train")
    assert cmd[i - 2:i] == ["python", "-m"]
    return cmd[i + 1:]


def _resolve(options: List[str], env: Dict[str, str], work: Path, monkeypatch) -> argparse.Namespace:
    """ESPnet's own decision on distributed mode for these options in this environment."""
    from espnet2.train.distributed_utils import resolve_distributed_mode
    from espnet_prune.task import PruneASRTask

    monkeypatch.chdir(work)
    for k in [k for k in os.environ if k.startswith("SLURM_") or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = PruneASRTask.get_parser().parse_args(options)
    resolve_distributed_mode(args)
    return args


def test_multi_node_slurm_training_gets_espnet_distributed_options(work, monkeypatch):
    fake_stage3_outputs(work)
    proc = run_recipe(work, "--stage", "4", "--stop_stage", "4", "--ngpu", "4", "--num_nodes", "2",
                      cmd_backend="slurm", slurm_opts="-p gpu --time 1:00:00")
    assert proc.returncode != 0
    srun = _recorded(work)
    # one task per node, 4 GPUs each, the user's options first
    assert srun[:3] == ["-p", "gpu", "--time"]
    for opt in ("--gres=gpu:4", "--nodes=2", "--ntasks-per-node=1", "--export=ALL"):
        assert opt in srun
    options = _espnet_command(srun)
    out = work / "exp/mini/asr_baseline"
    text = " ".join(options)
    assert "--ngpu 4 --multiprocessing_distributed true --dist_launcher slurm" in text
    assert f"--dist_init_method file://{out.resolve()}/.dist_init_" in text
    assert "--use_tensorboard true" in text and "--resume true" in text
    # ESPnet, in the task Slurm starts on node 1 of 2: distributed, one spawned process per GPU
    slurm_env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_NODES": "2",
                 "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NODEID": "1", "SLURM_LOCALID": "0"}
    args = _resolve(options, slurm_env, work, monkeypatch)
    assert args.distributed and args.multiprocessing_distributed and args.ngpu == 4
    # the job died before its first checkpoint: no half-made experiment directory
    assert not out.exists()
    assert (work / "exp/mini/asr_baseline.failed/train.log").is_file()
    assert not list((work / "exp/mini/asr_baseline.failed").glob(".dist_init_*"))
    assert "moved to exp/mini/asr_baseline.failed" in proc.stderr


def test_single_node_multi_gpu_and_resumable_failure(work, monkeypatch):
    fake_stage3_outputs(work)
    out = work / "exp/mini/asr_baseline"
    out.mkdir(parents=True)
    (out / "checkpoint.pth").write_bytes(b"an interrupted run")
    (out / "train.log").write_text("1epoch results: [train] acc=0.5 [valid] acc=0.6\n")
    proc = run_recipe(work, "--stage", "4", "--stop_stage", "4", "--ngpu", "2", cmd_backend="slurm")
    assert proc.returncode != 0
    srun = _recorded(work)
    assert "--gres=gpu:2" in srun and not any(a.startswith("--nodes") for a in srun)
    options = _espnet_command(srun)
    text = " ".join(options)
    assert "--ngpu 2 --multiprocessing_distributed true" in text
    assert "--dist_launcher" not in text and "--dist_init_method" not in text
    args = _resolve(options, {}, work, monkeypatch)
    assert args.distributed and args.multiprocessing_distributed
    # a failed run that has a checkpoint stays where --resume true finds it
    assert (out / "checkpoint.pth").read_bytes() == b"an interrupted run"
    assert not (work / "exp/mini/asr_baseline.failed").exists()
    assert "a re-run resumes from it" in proc.stderr
    # the resumed run's log adds to the interrupted one's epochs
    log = (out / "train.log").read_text().splitlines()
    assert log[0] == "1epoch results: [train] acc=0.5 [valid] acc=0.6" and "espnet_prune.bin.asr_train" in log[1]


def test_single_gpu_training_is_not_distributed(work, monkeypatch):
    fake_stage3_outputs(work)
    proc = run_recipe(work, "--stage", "4", "--stop_stage", "4", "--ngpu", "1", cmd_backend="slurm")
    assert proc.returncode != 0
    srun = _recorded(work)
    options = _espnet_command(srun)
    assert "--multiprocessing_distributed" not in options
    args = _resolve(options, {}, work, monkeypatch)
    assert not args.distributed


def test_a_family_is_one_pruning_run_of_every_target():
    from espnet_prune.recipe.preflight import pruning_runs

    assert pruning_runs(["params:0.7", "params:0.3", "params:0.5"], family=True) == [
        ("params0.3_0.5_0.7", ["params:0.3", "params:0.5", "params:0.7"])]
    assert pruning_runs(["macs:0.6", "macs:0.25"], family=True) == [("macs0.25_0.6", ["macs:0.25", "macs:0.6"])]
    assert pruning_runs(["params:0.7", "macs:0.3"], family=False) == [
        ("params0.7", ["params:0.7"]), ("macs0.3", ["macs:0.3"])]
