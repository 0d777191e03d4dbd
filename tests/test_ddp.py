"""Distributed (DDP) pruning on CPU: two gloo ranks through ESPnet's own trainer.

Each rank is launched the way an external launcher (torchrun, srun) does it:
``RANK`` / ``WORLD_SIZE`` in the environment and ``--ngpu 0
--multiprocessing_distributed false --dist_backend gloo``, which ESPnet's
``resolve_distributed_mode`` turns into a distributed run (world size 2 > 1). The
ranks meet through a file (``--dist_init_method file://...``, a fresh one per
launch) rather than a TCP port: no port to pick, so no race for one on a busy
machine. ``tests/ddp_worker.py`` dumps each rank's
student at the end, since ESPnet's rank 0 alone writes checkpoints.

Checks: every weight, gate log-alpha, Lagrange multiplier and buffer, and the
eval-mode selection, are identical on both ranks (and equal rank 0's checkpoint);
the teacher is outside the DDP module; ``--resume true`` continues the run; the
model shrunk from rank 1's state equals the one shrunk from rank 0's checkpoint.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from synthetic import base_config, make_corpus, run, train_cmd, write_yaml

WORLD = 2
EPOCHS = 2  # first run; the resumed run goes on to EPOCHS + 1
WORKER = Path(__file__).with_name("ddp_worker.py")


def launch_ddp(train: List[str], dump_dir: Path, log_dir: Path, timeout: float = 600) -> Dict[int, dict]:
    """Start ``WORLD`` ranks of ``ddp_worker.py`` with the options of the training
    command ``train`` (``python -m espnet_prune.bin.asr_train OPTIONS``); return each rank's dump."""
    assert train[1:3] == ["-m", "espnet_prune.bin.asr_train"], train[:3]
    log_dir.mkdir(parents=True, exist_ok=True)
    store = log_dir / "rendezvous"  # torch's FileStore: must not exist before the launch
    assert not store.exists(), store
    procs, logs = [], []
    for rank in range(WORLD):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
        for name in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        log = log_dir / f"rank{rank}.log"
        logs.append(log)
        cmd = [sys.executable, str(WORKER), str(dump_dir), *train[3:],
               "--multiprocessing_distributed", "false", "--dist_backend", "gloo",
               "--dist_init_method", f"file://{store.resolve()}"]
        with log.open("w") as out:
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
    failures = []
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            rc = "timeout"
        if rc != 0:
            tail = "\n".join(log.read_text().splitlines()[-30:])
            failures.append(f"rank {rank} exited with {rc}:\n{tail}")
    if failures:
        raise RuntimeError("\n".join(failures))
    return {r: torch.load(dump_dir / f"rank{r}.pth", map_location="cpu", weights_only=False)
            for r in range(WORLD)}


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = make_corpus(root / "data", n_utts=48, n_valid=8)
    teacher_conf = write_yaml(root / "teacher.yaml", base_config(max_epoch=1, batch_size=16))
    run(train_cmd(teacher_conf, root / "teacher", data), root / "teacher.log")

    conf = base_config(encoder="gated_conformer", decoder="gated_transformer", model="prune_espnet",
                       batch_size=16, max_epoch=EPOCHS)
    conf["model_conf"].update(
        teacher_config=str(root / "teacher/config.yaml"),
        teacher_model_file=str(root / "teacher/valid.loss.best.pth"),
        target={"params": 0.4},
        target_warmup_steps=4,
    )
    # a large gate step so that the eval structure moves within a few updates
    conf["optim2_conf"] = {"lr": 0.5, "betas": [0.9, 0.9]}
    config = write_yaml(root / "prune.yaml", conf)
    out = root / "prune"
    first = launch_ddp(train_cmd(config, out, data), root / "dump1", root / "run1")
    resumed = launch_ddp(train_cmd(config, out, data, ["--max_epoch", str(EPOCHS + 1), "--resume", "true"]),
                         root / "dump2", root / "run2")
    return root, first, resumed


def _assert_ranks_identical(dumps: Dict[int, dict]) -> None:
    s0, s1 = dumps[0]["state"], dumps[1]["state"]
    assert s0.keys() == s1.keys()
    differ = [k for k in s0 if not torch.equal(s0[k], s1[k])]
    assert not differ, f"rank 0 and rank 1 differ in {differ[:10]}"
    assert dumps[0]["selection"] == dumps[1]["selection"]


def test_ranks_identical_after_training_and_equal_rank0_checkpoint(ddp):
    root, first, resumed = ddp
    assert [first[r]["rank"] for r in range(WORLD)] == [0, 1]
    assert first[0]["world_size"] == WORLD
    for dumps in (first, resumed):
        _assert_ranks_identical(dumps)
    state = first[1]["state"]
    gates = [k for k in state if k.endswith("log_alpha")]
    assert any(k.startswith("encoder.") for k in gates) and any(k.startswith("decoder.") for k in gates)
    # the run really trained the gates and multipliers (not a trivially equal start)
    init = torch.load(root / "prune/1epoch.pth", map_location="cpu")
    assert any(not torch.equal(init[k], state[k]) for k in gates)
    assert float(state["pruning.lambda1"]) != 0.0 and float(state["pruning.lambda2"]) != 0.0
    # rank 1's state equals what rank 0 wrote at the end of the last epoch
    ckpt = torch.load(root / f"prune/{EPOCHS}epoch.pth", map_location="cpu")
    assert ckpt.keys() == state.keys()
    assert all(torch.equal(ckpt[k], state[k]) for k in state)


def test_teacher_outside_ddp_module(ddp):
    _, first, _ = ddp
    for dump in first.values():
        assert dump["ddp_wraps_model"]
        assert dump["teacher_params"] > 0
        assert dump["ddp_teacher_params"] == 0
        assert dump["teacher_trainable"] == 0
        assert not any("teacher" in k for k in dump["ddp_state_keys"] + dump["ddp_param_names"])
        # what DDP synchronises: the student's weights, gates and multipliers
        names = {n[len("module."):] for n in dump["ddp_param_names"]}
        assert {"pruning.lambda1", "pruning.lambda2"} <= names
        assert any(n.endswith("log_alpha") for n in names)


def _epochs_reported(log: Path) -> List[int]:
    return [int(m) for m in re.findall(r"(\d+)epoch results:", log.read_text())]


def test_resume_continues_the_run(ddp):
    root, first, resumed = ddp
    assert _epochs_reported(root / "run1/rank0.log") == list(range(1, EPOCHS + 1))
    assert _epochs_reported(root / "run2/rank0.log") == [EPOCHS + 1]
    steps = int(first[0]["state"]["pruning.num_updates"])
    assert steps > 0 and steps % EPOCHS == 0
    # the resumed run started from the checkpoint's counters and ran one more epoch
    assert int(resumed[0]["state"]["pruning.num_updates"]) == steps + steps // EPOCHS
    assert float(resumed[0]["state"]["pruning.ramp_start"]) == float(first[0]["state"]["pruning.ramp_start"])
    last = torch.load(root / f"prune/{EPOCHS + 1}epoch.pth", map_location="cpu")
    assert all(torch.equal(last[k], v) for k, v in resumed[1]["state"].items())


def test_shrunk_model_of_rank1_equals_rank0s(ddp, tmp_path):
    from espnet_prune.bin import shrink

    root, _, resumed = ddp
    rank1 = tmp_path / "rank1.pth"
    torch.save(resumed[1]["state"], rank1)
    summaries = {}
    for name, model_file in (("rank0", root / f"prune/{EPOCHS + 1}epoch.pth"), ("rank1", rank1)):
        summaries[name] = shrink.main([
            "--asr_train_config", str(root / "prune/config.yaml"),
            "--asr_model_file", str(model_file), "--output_dir", str(tmp_path / name),
        ])
    a = torch.load(tmp_path / "rank0/model.pth", map_location="cpu")
    b = torch.load(tmp_path / "rank1/model.pth", map_location="cpu")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "rank0/config.yaml").read_text().replace("rank0", "") == \
        (tmp_path / "rank1/config.yaml").read_text().replace("rank1", "")
    for s in summaries.values():
        s.pop("output_dir")
    assert summaries["rank0"] == summaries["rank1"]
    # the gates pruned something: the shrunk model is smaller than the gated one
    assert summaries["rank0"]["params_shrunk_model"] < summaries["rank0"]["params_gated_model"]
