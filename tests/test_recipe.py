"""CI-sized smoke run of the whole recipe (run.sh stages 1-8) on a very small mini corpus.

Quality is not asserted here, only that every stage produces its outputs, that a
re-run does no work, and that bad audio stops the feature stage by name.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.register_assert_rewrite("recipe_fixtures")  # imported before pytest loads it as a plugin
from recipe_fixtures import RECIPE_ARGS, REPO, recipe_dir, run_recipe, snapshot  # noqa: E402

pytest_plugins = ["recipe_fixtures"]  # recipe_run: started in the background (see recipe_fixtures)
COMPARED = ("baseline_control", "scratch_params0.5", "magnitude_params0.5", "layerdrop_params0.5")


def _run(work: Path, *extra: str):
    return run_recipe(work, *RECIPE_ARGS, *extra)


@pytest.fixture(scope="module")
def recipe(recipe_run):
    assert recipe_run.returncode == 0, recipe_run.stderr[-4000:]
    return recipe_run.work, recipe_run


def test_every_stage_produces_its_outputs(recipe):
    work, proc = recipe
    for stage in range(1, 10):
        assert f"===== Stage {stage}:" in proc.stderr
    expected = [
        "data/mini/train/wav.scp", "data/mini/test/text", "data/mini/test/utt2accent",
        "dump/mini/fbank/train/feats.scp", "dump/mini/fbank/train/feats_stats.npz",
        "dump/mini/fbank/train_filt/text_shape.bpe", "data/mini/token_list/unigram30/tokens.txt",
        "exp/mini/asr_baseline/final/model.pth", "exp/mini/prune_params0.5/final_gated/model.pth",
        "exp/mini/prune_params0.5/shrunk/config.yaml", "exp/mini/prune_params0.5/final/model.pth",
    ]
    expected += [f"exp/mini/{m}/final/model.pth" for m in COMPARED]
    for model in ("asr_baseline", "prune_params0.5") + COMPARED:
        expected += [f"exp/mini/{model}/final/decode_asr_test/text",
                     f"exp/mini/{model}/final/decode_asr_test/score_wer/result.txt"]
    missing = [p for p in expected if not (work / p).is_file()]
    assert not missing, missing
    # every test utterance is decoded
    n_ref = len((work / "dump/mini/fbank/test/text").read_text().splitlines())
    n_hyp = len((work / "exp/mini/prune_params0.5/final/decode_asr_test/text").read_text().splitlines())
    assert n_ref == n_hyp == 8
    results = (work / "RESULTS.md").read_text()
    assert "baseline" in results and "prune_params0.5" in results
    for model in COMPARED:
        assert f"| {model} |" in results
    # the pruned model is paired with each same-size baseline (not the control) per set
    pairs = json.loads((work / "exp/mini/results.json").read_text())["statistics"]["pairs"]
    baselines = [m for m in COMPARED if m.endswith("_params0.5")]
    assert pairs == [["prune_params0.5", m] for m in baselines] and len(baselines) == 3
    for m in baselines:
        assert f"| prune_params0.5 | {m} | test |" in results
    # the second seed: the pruned and scratch models again, trained with seed 1, in the report
    for m in ("prune_params0.5_seed1", "scratch_params0.5_seed1"):
        assert (work / f"exp/mini/{m}/final/decode_asr_test/score_wer/result.txt").is_file(), m
    assert _yaml(work / "exp/mini/prune_params0.5_seed1/config.yaml")["seed"] == 1
    assert _yaml(work / "exp/mini/prune_params0.5_seed1/finetune/config.yaml")["seed"] == 1
    assert _yaml(work / "exp/mini/scratch_params0.5_seed1/config.yaml")["seed"] == 1
    assert _yaml(work / "exp/mini/prune_params0.5/config.yaml")["seed"] == 0
    rep = json.loads((work / "exp/mini/results.json").read_text())
    assert {g: v["members"] for g, v in rep["seeds"]["groups"].items()} == {
        "prune_params0.5": ["prune_params0.5", "prune_params0.5_seed1"],
        "scratch_params0.5": ["scratch_params0.5", "scratch_params0.5_seed1"]}
    assert [(p["model"], p["other"]) for p in rep["seeds"]["pairs"]] == [("prune_params0.5", "scratch_params0.5")]
    # every model's training cost: its runs, the teacher's share for those that start from it
    cost = rep["training"]
    assert [r["dir"] for r in cost["prune_params0.5"]["runs"]] == [
        "exp/mini/prune_params0.5", "exp/mini/prune_params0.5/finetune"]
    assert cost["prune_params0.5"]["from_teacher"] and not cost["scratch_params0.5"]["from_teacher"]
    assert cost["prune_params0.5"]["teacher_cpu_s"] == cost["baseline"]["cpu_s"] > 0
    assert cost["baseline"]["epochs"] == 2 and not cost["baseline"]["runs"][0]["early_stopped"]
    assert "**The teacher `baseline` is not trained to convergence**" in results
    # the final pruned model is a plain ESPnet model with a pruned encoder
    config = (work / "exp/mini/prune_params0.5/final/config.yaml").read_text()
    assert "encoder: pruned_conformer" in config and "prune_espnet" not in config


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def _params(model_dir: Path) -> int:
    """Parameters of the model as ESPnet builds it (plugin registered), weights loaded."""
    from espnet_prune.model_io import build_asr_model, count_params

    return count_params(build_asr_model(model_dir / "config.yaml", model_dir / "model.pth")[0])


def test_comparison_models_have_the_budget_and_size(recipe, monkeypatch):
    work, _ = recipe
    monkeypatch.chdir(work)  # the configs' paths (tokens, stats) are relative to the recipe
    exp = work / "exp/mini"
    conf = {name: _yaml(REPO / f"conf/smoke/{name}_asr_conformer.yaml") for name in ("train", "prune", "finetune")}
    # the control makes as many updates as pruning + fine-tuning: same batches, their epochs
    control = _yaml(exp / "baseline_control/config.yaml")
    assert control["max_epoch"] == conf["prune"]["max_epoch"] + conf["finetune"]["max_epoch"]
    pruning = _yaml(exp / "prune_params0.5/config.yaml")  # as ESPnet ran it, defaults included
    for key in ("batch_type", "batch_size", "batch_bins", "accum_grad", "num_iters_per_epoch"):
        assert control[key] == pruning[key], key
    assert control["init_param"] == ["exp/mini/asr_baseline/final/model.pth"]
    scratch = _yaml(exp / "scratch_params0.5/config.yaml")
    assert scratch["max_epoch"] == sum(c["max_epoch"] for c in conf.values())
    assert not scratch.get("init_param")
    for method in ("magnitude", "layerdrop"):
        ft = _yaml(exp / f"{method}_params0.5/finetune/config.yaml")
        assert ft["max_epoch"] == conf["prune"]["max_epoch"] + conf["finetune"]["max_epoch"]
        assert ft["model_conf"]["teacher_model_file"] == "exp/mini/asr_baseline/final/model.pth"
    # same whole-model size as the pruned model: within 1 % (layerdrop: whole layers, reported)
    pruned = _params(exp / "prune_params0.5/final")
    teacher = _params(exp / "asr_baseline/final")
    assert abs(pruned / teacher - 0.5) < 0.02
    for name in ("scratch_params0.5", "magnitude_params0.5"):
        assert abs(_params(exp / name / "final") / pruned - 1) <= 0.01, name
    layerdrop = _params(exp / "layerdrop_params0.5/final")
    assert layerdrop < teacher
    summary = json.loads((exp / "layerdrop_params0.5/shrunk/summary.json").read_text())
    assert summary["params_shrunk_model"] == layerdrop
    assert abs(summary["size_error"] - (layerdrop / pruned - 1)) < 1e-9

def _scalars(event_dir: Path) -> dict:
    """TensorBoard scalars of one ESPnet summary writer: tag -> values in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_training_writes_tensorboard_curves(recipe):
    work, _ = recipe
    for model, epochs in (("asr_baseline", 2), ("prune_params0.5", 2)):
        tb = work / "exp/mini" / model / "tensorboard"
        assert list((tb / "train").glob("events.out.tfevents.*")), f"no event file in {tb}/train"
        train, valid = _scalars(tb / "train"), _scalars(tb / "valid")
        assert train["iter_epoch"] == list(range(1, epochs + 1))  # one entry per epoch (smoke configs)
        assert len(valid["loss"]) == epochs
    # the pruning run's state variables are curves too
    train = _scalars(work / "exp/mini/prune_params0.5/tensorboard/train")
    for key in ("expected_sparsity", "target_sparsity", "lambda1", "lambda2", "eval_sparsity"):
        assert key in train, sorted(train)


def test_rerun_does_no_work(recipe):
    work, _ = recipe
    before = snapshot(work / "exp")
    proc = _run(work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "training " not in proc.stderr
    assert snapshot(work / "exp") == before


def test_family_shrinks_nested_members_from_one_pruning_run(recipe, tmp_path):
    """--family true on a copy of the finished recipe: one pruning run trains 0.5 and 0.7 at
    once, both members are shrunk from its gated model with the nested rule, decoded, and
    reported beside the separately pruned 0.5."""
    work, _ = recipe
    fam = tmp_path / "asr1"
    shutil.copytree(work, fam, symlinks=True)  # mtimes kept: what is complete stays complete
    # without fine-tuning (the main recipe fine-tunes its pruned models through the same step)
    proc = _run(fam, "--stage", "5", "--prune_targets", "0.5 0.7", "--family", "true", "--baselines", "",
                "--finetune", "false", "--seeds", "")
    assert proc.returncode == 0, proc.stderr[-4000:]
    exp = fam / "exp/mini"
    assert not (exp / "prune_params0.7").exists()  # one pruning run for the family
    assert _yaml(exp / "prune_params0.5_0.7/config.yaml")["model_conf"]["target"] == {"params": [0.5, 0.7]}
    summaries = {t: json.loads((exp / f"family_params{t}/shrunk/summary.json").read_text()) for t in ("0.5", "0.7")}
    for t, summary in summaries.items():
        assert summary["target"]["rule"] == "nested" and summary["target"]["sparsity"] == float(t)
        assert summary["target"]["family"] == [0.5, 0.7]
        assert abs(summary["params_sparsity"] - float(t)) < 0.03
        assert (exp / f"family_params{t}/final/model.pth").exists()
        assert f"| family_params{t} " in (exp / "RESULTS.md").read_text()
    # nested: no block, front-end conv or decoder layer keeps more at the higher sparsity
    sizes = {}
    for t, summary in summaries.items():
        dec = _yaml(exp / f"family_params{t}/shrunk/config.yaml")["decoder_conf"]["layer_structures"]
        sizes[t] = ([n for b in summary["block_structures"] for n in b.values()]
                    + list(summary.get("subsampling_channels", [])) + [n for layer in dec for n in layer.values()])
    assert all(a <= b for a, b in zip(sizes["0.7"], sizes["0.5"]))
    assert summaries["0.7"]["params_shrunk_model"] < summaries["0.5"]["params_shrunk_model"]
    assert (exp / "family_params0.5/final/decode_asr_test/text").exists()
    assert not (exp / "family_params0.5/finetune").exists()
    report_args = (exp / "report.args").read_text()
    assert "family_params0.5:prune_params0.5" in report_args
    assert "--train_log prune_params0.5_0.7=" in report_args


def test_corrupt_audio_stops_feature_stage_by_name(recipe):
    work, _ = recipe
    wav_scp = (work / "data/mini/test/wav.scp").read_text().splitlines()
    utt, path = wav_scp[0].split(maxsplit=1)
    Path(path if os.path.isabs(path) else work / path).write_bytes(b"RIFF garbage")
    (work / "dump/mini/fbank/test/.done").unlink()
    proc = _run(work, "--stage", "2", "--stop_stage", "2")
    assert proc.returncode != 0
    assert utt in proc.stderr
    assert not (work / "dump/mini/fbank/test/.done").exists()


def test_bad_target_fails_before_any_stage(tmp_path):
    recipe_dir(tmp_path)
    for spec, message in (("0.5 1.5", "params=1.5 must be in [0, 1)"),
                          ("flops:0.5", "target.flops: unknown cost")):
        proc = _run(tmp_path, "--prune_targets", spec)
        assert proc.returncode != 0
        assert message in proc.stderr
        assert "===== Stage" not in proc.stderr  # nothing ran
        assert not (tmp_path / "exp").exists() and not (tmp_path / "data").exists()
