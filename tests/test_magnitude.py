"""One-shot magnitude pruning (the ``magnitude`` baseline) and the other same-size baselines.

Unit magnitudes are checked against the slicing code the shrinker uses (the weights a
unit owns are what disappears when it is sliced away); the selection against the
exact-target rule's guarantees; the layer-dropped and scratch models against the
teacher's weights and the requested size.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from espnet.nets.pytorch_backend.conformer.encoder_layer import EncoderLayer

from conftest import build_asr, conf_variant, randomize_batchnorm, write_asr_config
from espnet_prune.blocks import subset_module
from espnet_prune.magnitude import channel_norms, magnitude_prune, open_gates, unit_norms
from espnet_prune.model_io import build_asr_model, count_params, load_train_args, save_asr_model
from espnet_prune.recipe import same_size
from espnet_prune.targets import build_selector
from test_targets import assert_within_guarantee, largest_unit_params  # the rule's guarantee, recomputed

GATES = {"gate_granularities": ["heads", "ffn1_units", "ffn2_units", "conv_channels", "ffn1", "mha",
                                "conv", "ffn2", "subsampling_channels"]}


def _sumsq(module: torch.nn.Module) -> float:
    return sum(float((p.detach().double() ** 2).sum()) for p in module.parameters())


def _randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "log_alpha" not in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)
    randomize_batchnorm(model, seed)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A dense conformer + transformer model with random weights (config.yaml + model.pth)."""
    tmp = tmp_path_factory.mktemp("teacher")
    conf = dict(conf_variant("latest_rel_macaron"), input_layer="conv2d6")
    model, args = build_asr(write_asr_config(tmp / "t.yaml", "conformer", conf, input_size=20))
    _randomize(model, 0)
    save_asr_model(tmp / "final", model.eval(), args)
    return tmp / "final"


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    """The teacher loaded back (model in eval mode, train args); tests only read it."""
    model, args = build_asr_model(teacher_dir / "config.yaml", teacher_dir / "model.pth")
    return model.eval(), args


@pytest.fixture(scope="module")
def prune_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("conf") / "prune.yaml"
    path.write_text(yaml.safe_dump({"encoder": "gated_conformer", "encoder_conf": dict(GATES),
                                    "decoder": "gated_transformer", "decoder_conf": {}}))
    return path


@pytest.mark.parametrize("variant", ["latest_rel_macaron", "legacy_rel", "abs_pos_no_macaron"])
def test_unit_norms_are_the_weights_slicing_removes(variant, one_thread, tmp_path):
    model, _ = build_asr(write_asr_config(tmp_path / "c.yaml", "conformer", conf_variant(variant), input_size=20))
    _randomize(model, 1)
    layer: EncoderLayer = model.encoder.encoders[0]
    modules = [layer.self_attn, layer.feed_forward, layer.conv_module, model.decoder.decoders[0].src_attn,
               model.decoder.decoders[0].feed_forward]
    for module in [m for m in modules if m is not None]:
        norms = unit_norms(module)
        n = norms.numel()
        full = _sumsq(module)
        for u in range(n):
            rest = torch.tensor([i for i in range(n) if i != u])
            owned = full - _sumsq(subset_module(module, rest))
            assert owned == pytest.approx(float(norms[u]) ** 2, rel=1e-9, abs=1e-9), (type(module).__name__, u)


def test_channel_norms_are_the_weights_shrinking_removes(one_thread, tmp_path, prune_config, teacher_dir):
    args = same_size.gated_args(load_train_args(teacher_dir / "config.yaml"),
                                same_size.read_yaml(prune_config))
    model, _ = build_asr_model(args)
    _randomize(model, 2)
    open_gates(model)  # kept channels unscaled
    embed = model.encoder.embed
    from espnet_prune.frontend import subsampling_convs, subsampling_out_linear

    convs = subsampling_convs(embed)
    norms = channel_norms(convs, subsampling_out_linear(embed))
    full = _sumsq(embed.shrink([torch.arange(c.out_channels) for c in convs])[0])
    for i, conv in enumerate(convs):
        for c in (0, 3, conv.out_channels - 1):
            keep = [torch.arange(k.out_channels) for k in convs]
            keep[i] = torch.tensor([j for j in range(conv.out_channels) if j != c])
            owned = full - _sumsq(embed.shrink(keep)[0])
            assert owned == pytest.approx(float(norms[i][c]) ** 2, rel=1e-9, abs=1e-9)


def _gated_teacher(teacher_dir: Path, prune_config: Path):
    args = same_size.gated_args(load_train_args(teacher_dir / "config.yaml"),
                                same_size.read_yaml(prune_config))
    model, _ = build_asr_model(args)
    same_size.load_teacher_into(model, teacher_dir / "model.pth")
    return model.eval(), args


def test_open_gates_keep_the_teachers_function(one_thread, teacher, teacher_dir, prune_config):
    teacher, _ = teacher
    model, _ = _gated_teacher(teacher_dir, prune_config)
    selector = build_selector(model, "params", 0.0)
    magnitude_prune(model, selector)
    x = torch.randn(2, 60, 20, generator=torch.Generator().manual_seed(0))
    lens = torch.tensor([60, 45])
    with torch.no_grad():
        ref, ref_lens = teacher.eval().encode(x, lens)
        out, out_lens = model.encode(x, lens)
    assert torch.equal(ref_lens, out_lens)
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_magnitude_selection_keeps_the_strongest_units_at_the_target(sparsity, one_thread, teacher_dir,
                                                                    prune_config, teacher):
    model, _ = _gated_teacher(teacher_dir, prune_config)
    selector = build_selector(model, "params", sparsity)
    kept = magnitude_prune(model, selector)
    dense = count_params(teacher[0])
    assert selector.dense_cost() == dense
    # (achieved_cost is the shrunk model's numel: test_targets.py.) Front end, blocks and
    # decoder are all gated: the largest unit is the teacher's largest.
    assert_within_guarantee(selector, selector.achieved_cost(), dense, sparsity, largest_unit_params(teacher[0]))
    groups, _ = selector.groups()
    scores = {g.key: g.scores for g in groups}
    # Within a module every unit costs the same (front-end channels: more, later), so the
    # rule's fill keeps each module's strongest units; only its final round-up/exchange step
    # may add one unit out of order.
    out_of_order = 0
    for (p, k), s in scores.items():
        idx = kept[p][k]
        top = torch.argsort(s, descending=True)[: idx.numel()]
        out_of_order += len(set(idx.tolist()) - set(top.tolist()))
    assert sum(idx.numel() for sel in kept.values() for idx in sel.values()) > 0
    assert out_of_order <= 1


def test_magnitude_command_writes_a_model_of_the_requested_size(one_thread, tmp_path, teacher, teacher_dir,
                                                                 prune_config):
    teacher_params = count_params(teacher[0])
    want = int(0.55 * teacher_params)
    summary = same_size.magnitude(teacher_dir, prune_config, want, tmp_path / "mag")
    model, args = build_asr_model(tmp_path / "mag/config.yaml", tmp_path / "mag/model.pth")
    assert summary["params_shrunk_model"] == count_params(model)
    assert abs(count_params(model) - want) <= largest_unit_params(teacher[0]) / 2 + 1e-6  # the rule's guarantee
    assert args.encoder == "pruned_conformer" and args.decoder == "pruned_transformer"
    assert json.loads((tmp_path / "mag/summary.json").read_text()) == summary


def test_layerdrop_keeps_whole_teacher_layers(one_thread, tmp_path, teacher, teacher_dir):
    teacher, targs = teacher
    total = count_params(teacher)
    block = count_params(teacher.encoder.encoders[0])
    layer = count_params(teacher.decoder.decoders[0])
    want = total - block  # exactly one encoder block fewer
    summary = same_size.layerdrop(teacher_dir, want, tmp_path / "ld")
    model, _ = build_asr_model(tmp_path / "ld/config.yaml", tmp_path / "ld/model.pth")
    assert count_params(model) == want == summary["params_shrunk_model"]
    assert summary["encoder_blocks_kept"] == [1, 3] and summary["decoder_layers_kept"] == [1]
    kept = [i - 1 for i in summary["encoder_blocks_kept"]]
    for new, old in enumerate(kept):
        a = model.encoder.encoders[new].state_dict()
        b = teacher.encoder.encoders[old].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # same function as the teacher's own layers run in that order
    x = torch.randn(1, 50, 20, generator=torch.Generator().manual_seed(3))
    lens = torch.tensor([50])
    with torch.no_grad():
        enc = teacher.eval().encoder
        xs, masks = enc.embed(x, (torch.arange(50)[None] < 50)[:, None])
        for old in kept:
            xs, masks = enc.encoders[old](xs, masks)
        ref = enc.after_norm(xs[0] if isinstance(xs, tuple) else xs)
        out, _ = model.eval().encode(x, lens)
    assert torch.allclose(out, ref, atol=1e-5)
    assert layer > 0


def test_layerdrop_plan_is_the_closest_size():
    total, block, layer = 1000, 150, 80
    for want in range(200, 1000, 37):
        ke, kd = same_size.layerdrop_plan(total, block, 4, layer, 2, want)
        sizes = [(abs(total - (4 - e) * block - (2 - d) * layer - want), e, d)
                 for e in range(1, 5) for d in range(1, 3)]
        best = min(s[0] for s in sizes)
        assert abs(total - (4 - ke) * block - (2 - kd) * layer - want) == best
    assert same_size.spread(6, 3) == [0, 2, 5] or same_size.spread(6, 3) == [0, 3, 5]
    assert same_size.spread(4, 1) == [3] and same_size.spread(4, 4) == [0, 1, 2, 3]


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_scratch_model_has_the_requested_size(fraction, one_thread, teacher):
    teacher, targs = teacher
    want = int(fraction * count_params(teacher))
    enc, dec, size = same_size.scratch_dims(targs, want)
    assert abs(size / want - 1) <= 0.01
    assert enc["num_blocks"] == targs.encoder_conf["num_blocks"]
    assert enc["output_size"] % enc["attention_heads"] == 0 and enc["output_size"] < targs.encoder_conf["output_size"]
    args = copy.deepcopy(targs)
    args.encoder_conf, args.decoder_conf = enc, dec
    assert count_params(build_asr_model(args)[0]) == size


def test_control_config_has_the_pruning_budget(tmp_path):
    def write(name, **conf):
        (tmp_path / name).write_text(yaml.safe_dump(conf))
        return tmp_path / name

    train = write("train.yaml", encoder="conformer", batch_size=32, max_epoch=15, optim="adam",
                  optim_conf={"lr": 0.005}, scheduler="warmuplr", scheduler_conf={"warmup_steps": 150})
    prune = write("prune.yaml", batch_type="sorted", batch_size=16, max_epoch=8, optim="adam", optim_conf={"lr": 0.001})
    ft = write("ft.yaml", batch_type="sorted", batch_size=16, max_epoch=3, optim="adam", optim_conf={"lr": 0.0005})
    conf = same_size.control_config(train, prune, ft)
    assert conf["encoder"] == "conformer" and conf["max_epoch"] == 11
    assert conf["batch_size"] == 16 and conf["batch_type"] == "sorted"
    assert conf["optim_conf"] == {"lr": 0.001}
    assert conf["scheduler"] == "steplr" and conf["scheduler_conf"] == {"step_size": 8, "gamma": 0.5}
    bad = write("bad.yaml", batch_type="sorted", batch_size=8, max_epoch=3)
    with pytest.raises(ValueError, match="bad.yaml: batch_size=8"):
        same_size.control_config(train, prune, bad)
    with pytest.raises(ValueError, match="max_epoch must be a positive integer"):
        same_size.max_epoch(write("none.yaml", batch_size=16))


def test_converging_teacher_config_gives_converging_scratch_and_a_fixed_control(tmp_path, teacher_dir,
                                                                                teacher):
    # a teacher trained to convergence (ESPnet's patience): the scratch model is trained the
    # same way (its own stopping, max_epoch only a cap); the control keeps an exact budget
    teacher_model, _ = teacher
    stop = {"patience": 4, "early_stopping_criterion": ["valid", "acc", "max"],
            "val_scheduler_criterion": ["valid", "acc"]}
    fixed = {"max_epoch": 10, "batch_size": 16}
    for name, extra in (("conv.yaml", stop), ("fixed.yaml", {})):
        (tmp_path / name).write_text(yaml.safe_dump({**fixed, **extra, "max_epoch": 60 if extra else 10}))
    want = int(0.5 * count_params(teacher_model))
    conf, _ = same_size.scratch_config(teacher_dir, tmp_path / "conv.yaml", want, budget_epochs=17)
    assert conf["max_epoch"] == 60 and conf["patience"] == 4 and same_size.converges(conf)
    conf, _ = same_size.scratch_config(teacher_dir, tmp_path / "fixed.yaml", want, budget_epochs=17)
    assert conf["max_epoch"] == 17 and not same_size.converges(conf)
    for name, extra in (("prune.yaml", {"max_epoch": 5}), ("ft.yaml", {"max_epoch": 2})):
        (tmp_path / name).write_text(yaml.safe_dump({"batch_size": 16, **extra}))
    control = same_size.control_config(tmp_path / "conv.yaml", tmp_path / "prune.yaml", tmp_path / "ft.yaml")
    assert control["max_epoch"] == 7 and not set(stop) & set(control)
