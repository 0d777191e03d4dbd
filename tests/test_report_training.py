"""Training cost, convergence and seed spread in RESULTS.md (espnet_prune.recipe.training),
against hand-made train logs and cost records, on the two tiny models of test_report."""

import json
import signal
import statistics
import subprocess
import sys
import time

import pytest

from espnet_prune.bin import option_value
from espnet_prune.bin.asr_train import record_cost
from espnet_prune.recipe import plots, report, training
from test_report import _argv, _summary_rows, setup  # noqa: F401 - setup: the fixture


def _train_dir(path, accs, early=False, costs=()):
    """A training dir: ESPnet-style epoch lines with these validation accuracies, maybe an
    early-stopping line, and ``train_cost.json`` records ``(cpu_s, wall_s)``."""
    path.mkdir(parents=True)
    lines = ["# python -m espnet_prune.bin.asr_train ...\n"]
    for e, acc in enumerate(accs, 1):
        lines.append(f"[h] t (trainer:394) INFO: {e}epoch results: [train] loss=1.0, acc=0.1, "
                     f"total_count={10 * e}, [valid] loss=2.0, acc={acc}, total_count=3\n")
    if early:
        lines.append(f"[h] t (reporter:413) INFO: [Early stopping] valid.acc has not been improved "
                     f"3 epochs continuously. The training was stopped at {len(accs)}epoch\n")
    (path / "train.log").write_text("".join(lines))
    for cpu, wall in costs:
        record_cost(path, wall, cpu, True)
    return path


def test_train_dir_epochs_stopping_accuracy_and_cost(tmp_path):
    d = _train_dir(tmp_path / "t", [0.5, 0.7, 0.69], early=True, costs=[(100.0, 60.0), (50.5, 30.0)])
    run = training.read_train_dir(d)
    assert run["epochs"] == 3 and run["early_stopped"]
    assert run["valid_acc"] == [[1, 0.5], [2, 0.7], [3, 0.69]]
    assert (run["cpu_s"], run["wall_s"]) == (150.5, 90.0)  # a resumed run adds up
    assert json.loads((d / "train_cost.json").read_text())[1] == {
        "wall_s": 30.0, "cpu_s": 50.5, "completed": True}
    # a run killed after logging epoch 3 but before its checkpoint, resumed (log appended):
    # epoch 3 is trained and logged again, its last result counts
    with (d / "train.log").open("a") as log:
        log.write("# python -m espnet_prune.bin.asr_train ... (resumed)\n"
                  "[h] t (trainer:394) INFO: 3epoch results: [train] acc=0.1, [valid] acc=0.71\n")
    assert training.read_train_dir(d)["valid_acc"] == [[1, 0.5], [2, 0.7], [3, 0.71]]
    bare = training.read_train_dir(_train_dir(tmp_path / "b", [0.1]))
    assert not bare["early_stopped"] and bare["cpu_s"] is None  # no record: unknown, not 0
    (d / "train_cost.json").write_text('{"cpu": 1}')
    with pytest.raises(training.TrainingError, match="train_cost.json"):
        training.read_train_dir(d)


def test_teacher_share_and_totals(tmp_path):
    t = _train_dir(tmp_path / "teacher", [0.5], costs=[(3600.0, 1800.0)])
    p = _train_dir(tmp_path / "prune", [0.4], costs=[(720.0, 400.0)])
    f = _train_dir(tmp_path / "prune" / "finetune", [0.6, 0.7], costs=[(360.0, 200.0)])
    s = _train_dir(tmp_path / "scratch", [0.2, 0.3, 0.4], costs=[(1800.0, 900.0)])
    names = ["base", "pruned", "small"]
    entries = training.parse_training(
        [f"base={t}", f"pruned=teacher+{p},{f}", f"small={s}"], names)
    c = training.training_costs(entries, "base")
    assert c["pruned"]["epochs"] == 3 and c["pruned"]["cpu_s"] == 1080.0
    assert c["pruned"]["teacher_cpu_s"] == 3600.0 and c["pruned"]["total_cpu_s"] == 4680.0
    assert c["small"]["total_cpu_s"] == 1800.0 and "teacher_cpu_s" not in c["small"]
    for bad, msg in ((f"nobody={t}", "not one of the --model names"), ("base", "expected NAME="),
                     (f"base={tmp_path}", "train.log not found")):
        with pytest.raises(training.TrainingError, match=msg):
            training.parse_training([bad], names)
    with pytest.raises(training.TrainingError, match="has no --training entry"):
        training.training_costs(training.parse_training([f"pruned=teacher+{p}"], names), "base")


def test_seed_spread_and_separation():
    rows = [{"name": n, "wer": {"test": {"wer": w}}} for n, w in
            (("p", 10.0), ("p1", 11.0), ("p2", 10.5), ("s", 11.5), ("s1", 12.5), ("s2", 10.9))]
    groups = training.parse_seed_groups(["p=p1,p2", "s=s1,s2"], [r["name"] for r in rows])
    spread = training.seed_spread(groups, rows, ["test"])
    v = spread["p"]["sets"]["test"]
    assert v["wers"] == [10.0, 11.0, 10.5] and v["mean"] == pytest.approx(10.5)
    assert v["sd"] == pytest.approx(statistics.stdev([10.0, 11.0, 10.5])) and v["range"] == 1.0
    c = training.compare_groups(spread["p"], spread["s"])["test"]
    assert c["mean_delta"] == pytest.approx(10.5 - (11.5 + 12.5 + 10.9) / 3)
    assert not c["exceeds_spread"]  # s2 (10.9) is below p1 (11.0): the ranges overlap
    rows[5]["wer"]["test"]["wer"] = 11.1
    spread = training.seed_spread(groups, rows, ["test"])
    assert training.compare_groups(spread["s"], spread["p"])["test"]["exceeds_spread"]
    for bad in ("p=", "p=p1,p1", "p=zz"):
        with pytest.raises(training.TrainingError, match="--seed_group"):
            training.parse_seed_groups([bad], [r["name"] for r in rows])


def _start_wrapper(out_dir, task_body: str, cost_interval_s=None, **popen):
    """Start ``bin.asr_train.main`` with ``--output_dir out_dir`` in a subprocess, its
    ``PruneASRTask.main`` replaced by a stand-in running ``task_body`` (Python lines)."""
    body = "".join(f"        {line}\n" for line in task_body.splitlines())
    interval = "" if cost_interval_s is None else f"asr_train.COST_INTERVAL_S = {cost_interval_s}\n"
    probe = out_dir / "probe.py"
    probe.write_text(
        "import sys, time, types\n"
        "task = types.ModuleType('espnet_prune.task')\n"
        "class PruneASRTask:\n"
        "    @staticmethod\n"
        "    def main(cmd=None):\n"
        f"{body}"
        "task.PruneASRTask = PruneASRTask\n"
        "sys.modules['espnet_prune.task'] = task\n"
        "from espnet_prune.bin import asr_train\n"
        f"{interval}"
        f"asr_train.main(['--output_dir', {str(out_dir)!r}])\n")
    return subprocess.Popen([sys.executable, str(probe)], **popen)


def test_training_stopped_by_sigterm_records_its_cost(tmp_path):
    """A kill (or a batch system's time limit) ends the training wrapper through its finally
    block: the invocation's cost is recorded as not completed (Python's default SIGTERM
    action would skip it). The task is a stand-in that waits to be killed."""
    proc = _start_wrapper(tmp_path, "print('training', flush=True)\ntime.sleep(60)",
                          stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "training\n"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    runs = json.loads((tmp_path / "train_cost.json").read_text())
    assert len(runs) == 1 and runs[0]["completed"] is False and runs[0]["wall_s"] >= 0.5


def test_training_killed_outright_keeps_its_cost_up_to_the_last_interval(tmp_path):
    """SIGKILL (the end of a session, the OOM killer) skips every finally block: the
    wrapper's daemon thread has kept the invocation's entry current every
    ``COST_INTERVAL_S`` seconds, so all but the last interval is recorded, as not completed.
    An earlier invocation's entry stays as it was."""
    record_cost(tmp_path, 30.0, 50.0, True)  # a first invocation, completed
    proc = _start_wrapper(tmp_path, "t = time.time()\nwhile time.time() - t < 60:\n    pass",
                          cost_interval_s=0.1)
    deadline = time.time() + 30
    while time.time() < deadline:  # until the running entry shows 0.3 s of CPU
        time.sleep(0.1)
        runs = json.loads((tmp_path / "train_cost.json").read_text())
        if len(runs) == 2 and runs[1]["cpu_s"] >= 0.3:
            break
    proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    runs = json.loads((tmp_path / "train_cost.json").read_text())
    assert runs[0] == {"wall_s": 30.0, "cpu_s": 50.0, "completed": True}
    assert len(runs) == 2 and runs[1]["completed"] is False
    assert runs[1]["cpu_s"] >= 0.3 and runs[1]["wall_s"] >= runs[1]["cpu_s"] - 0.05  # one thread


def test_option_reader_of_the_training_wrapper():
    assert option_value(["--output_dir", "a", "--x", "1", "--output_dir=b"], "--output_dir") == "b"
    assert option_value(["--output_dirs", "a"], "--output_dir") is None


def test_report_sections(setup, tmp_path):  # noqa: F811
    t = _train_dir(tmp_path / "teacher", [0.5, 0.6, 0.6, 0.59], early=True, costs=[(7200.0, 3600.0)])
    p = _train_dir(tmp_path / "prune", [0.55], costs=[(1800.0, 900.0)])
    out = tmp_path / "out"
    rep = report.main(_argv(setup, out, "--latency_utts", "0", "--bootstrap_samples", "200",
                            "--training", f"baseline={t}", "--training", f"pruned=teacher+{p}",
                            "--seed_group", "pruned=baseline", "--seed_group", "baseline=pruned",
                            "--pair", "pruned:baseline"))
    md = (out / "RESULTS.md").read_text()
    cost = md.split("## Training cost", 1)[1].split("\n## ", 1)[0]
    assert f"| baseline | `{t}` (4, patience) | 4 | 2.00 | - | 2.00 |" in cost
    assert f"| pruned | `{p}` (1, max_epoch) | 1 | 0.50 | 2.00 | 2.50 |" in cost
    head, rows = _summary_rows(md)
    assert head[-1] == "training CPU h (own + teacher)"
    assert rows["pruned"][head[-1]] == "0.50 + 2.00" and rows["baseline"][head[-1]] == "2.00"
    seeds = md.split("## Training seeds", 1)[1].split("\n## ", 1)[0]
    # test_report's hand-counted WERs: pruned 25.0 / 66.7, baseline 12.5 / 33.3
    assert "| pruned (pruned, baseline) | test | 66.7 / 33.3 | 50.00 |" in seeds
    # two groups of the same two models (in either order): no difference, ranges overlap
    assert "| pruned | baseline | test | +0.00 | +33.33 [+33.33, +33.33] | 0.000 | no |" in seeds
    g = rep["seeds"]["groups"]["pruned"]["sets"]["dev_clean"]
    assert g["range"] == pytest.approx(12.5) and g["sd"] == pytest.approx(12.5 / 2 ** 0.5)
    # the convergence figure: the model trained from scratch only (the teacher here)
    assert rep["plots"]["validation_accuracy"] == "validation_accuracy.png"
    assert (out / "validation_accuracy.png").read_bytes()[:8] == plots.PNG_SIGNATURE
    assert "![validation accuracy per epoch](validation_accuracy.png)" in md
    with pytest.raises(report.ReportError, match="--training"):
        report.main(_argv(setup, out, "--latency_utts", "0", "--training", f"pruned={tmp_path}"))
