"""The prune_espnet model and task: teacher handling, loss terms, optimizers, config errors."""


import pytest
import torch

from conftest import conf_variant, write_asr_config
from espnet_prune.model_io import save_asr_model


def _args(config):
    from espnet_prune.task import PruneASRTask

    return PruneASRTask.get_parser().parse_args(["--config", str(config), "--output_dir", "unused"])


def _build(config):
    from espnet_prune.task import PruneASRTask

    return PruneASRTask.build_model(_args(config))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    config = write_asr_config(root / "train.yaml", "conformer", conf_variant("latest_rel_macaron"))
    model = _build(config)
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    save_asr_model(root / "exp", model, _args(config))
    return root / "exp"


def _student_config(tmp_path, teacher_dir, encoder="gated_conformer", encoder_overrides=None, **model_conf):
    import yaml

    enc = dict(conf_variant("latest_rel_macaron"), **(encoder_overrides or {}))
    path = write_asr_config(tmp_path / "student.yaml", encoder, enc)
    conf = yaml.safe_load(path.read_text())
    conf["model"] = "prune_espnet"
    conf["init"] = "xavier_uniform"  # ESPnet's init must not undo the copy from the teacher
    conf["model_conf"].update(
        teacher_config=str(teacher_dir / "config.yaml"),
        teacher_model_file=str(teacher_dir / "model.pth"),
        target={"encoder_params": 0.5},
        target_warmup_steps=10,
    )
    conf["model_conf"].update(model_conf)
    path.write_text(yaml.safe_dump(conf))
    return path


def test_student_starts_as_teacher_and_teacher_stays_outside(tmp_path, teacher_dir):
    model = _build(_student_config(tmp_path, teacher_dir))
    teacher_state = model.teacher.state_dict()
    student_state = model.state_dict()
    for k, v in teacher_state.items():
        assert torch.equal(student_state[k], v), k
    assert not any(k.startswith("teacher") for k in student_state)
    teacher_params = {id(p) for p in model.teacher.parameters()}
    assert not teacher_params & {id(p) for p in model.parameters()}
    assert all(not p.requires_grad for p in model.teacher.parameters())
    # gates kept their own init (ESPnet's xavier init zeroes 1-d params otherwise)
    probs = torch.cat([g.keep_prob() for b in model.encoder.encoders for g in b.gates.values()])
    assert probs.min() > 0.9
    model.train()
    assert not model.teacher.training
    model.to(torch.float64)
    assert next(model.teacher.parameters()).dtype == torch.float64


def _batch(vocab=9):
    g = torch.Generator().manual_seed(0)
    speech = torch.randn(2, 8000, generator=g)
    lengths = torch.tensor([8000, 6000])
    text = torch.randint(2, vocab - 1, (2, 5), generator=g)
    text_lengths = torch.tensor([5, 3])
    text[1, 3:] = -1
    return speech, lengths, text, text_lengths


def test_loss_terms_and_reversed_multiplier_gradients(tmp_path, teacher_dir):
    model = _build(_student_config(tmp_path, teacher_dir, asr_weight=0.7, pred_weight=0.2, layer_weight=0.1))
    model.train()
    with torch.no_grad():
        model.pruning.lambda1.fill_(0.3)
        model.pruning.lambda2.fill_(0.5)
    loss, stats, _ = model(*_batch())
    gap = (stats["expected_sparsity"] - stats["target_sparsity"]).item()
    expected_loss = (
        0.7 * stats["loss_asr"] + 0.2 * stats["loss_pred"] + 0.1 * stats["loss_layer"]
        + 0.3 * gap + (0.5 + model.sparsity_p_gain / 2) * gap**2
    )
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)
    # 1 of 10 ramp steps, from the gates' initial expected sparsity to the target 0.5
    start = float(model.pruning.ramp_start)
    assert start == pytest.approx(stats["expected_sparsity"].item(), abs=1e-6)
    assert 0.0 < start < 0.5
    assert stats["target_sparsity"].item() == pytest.approx(start + (0.5 - start) * 0.1)
    loss.backward()
    # gradient ascent on the multipliers: their gradient is -(dL/dlambda)
    assert model.pruning.lambda1.grad.item() == pytest.approx(-gap, rel=1e-4)
    assert model.pruning.lambda2.grad.item() == pytest.approx(-(gap**2), rel=1e-4)
    gate_grads = [g.log_alpha.grad for b in model.encoder.encoders for g in b.gates.values()]
    assert all(gr is not None for gr in gate_grads)
    assert model.teacher.encoder.encoders[0].feed_forward.w_1.weight.grad is None
    # the prediction / layer terms are non-trivial once the student has moved
    assert stats["loss_asr"] > 0


def test_target_ramp_and_step_counter(tmp_path, teacher_dir):
    model = _build(_student_config(tmp_path, teacher_dir, target_warmup_steps=4, target={"encoder_macs": 0.4}))
    model.train()
    seen = []
    for _ in range(6):
        _, stats, _ = model(*_batch())
        seen.append(round(stats["target_sparsity"].item(), 4))
    start = float(model.pruning.ramp_start)
    assert seen == [round(start + (0.4 - start) * min(1.0, k / 4), 4) for k in range(1, 7)]
    assert seen[-1] == 0.4
    model.eval()
    with torch.no_grad():
        model(*_batch())
    assert int(model.pruning.num_updates) == 6  # eval forwards do not advance the ramp


def test_three_optimizers_partition_the_parameters(tmp_path, teacher_dir):
    from espnet_prune.task import PruneASRTask

    config = _student_config(tmp_path, teacher_dir)
    args = _args(config)
    model = PruneASRTask.build_model(args)
    opts = PruneASRTask.build_optimizers(args, model)
    assert len(opts) == 3
    groups = [{id(p) for g in o.param_groups for p in g["params"]} for o in opts]
    assert groups[1] == {id(p) for p in model.encoder.gate_parameters()}
    assert groups[2] == {id(model.pruning.lambda1), id(model.pruning.lambda2)}
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2])
    assert set().union(*groups) == {id(p) for p in model.parameters()}
    assert opts[1].param_groups[0]["lr"] == 0.1


def test_dense_model_gets_one_optimizer(teacher_dir):
    from espnet_prune.model_io import load_train_args
    from espnet_prune.task import PruneASRTask

    args = load_train_args(teacher_dir / "config.yaml")
    args.exclude_weight_decay = False
    model = PruneASRTask.build_model(args)
    assert len(PruneASRTask.build_optimizers(args, model)) == 1


@pytest.mark.parametrize(
    "model_conf, encoder_overrides, error, key",
    [
        (dict(target={"params": 1.0}), None, ValueError, "target.params"),
        (dict(target={"params": -0.1}), None, ValueError, "target.params"),
        (dict(target={"flops": 0.5}), None, ValueError, "target.flops"),
        (dict(teacher_model_file="/nonexistent/model.pth"), None, FileNotFoundError, "teacher_model_file"),
        (dict(teacher_config="/nonexistent/config.yaml"), None, FileNotFoundError, "teacher_config"),
        (dict(), dict(linear_units=40), ValueError, "architecture does not match"),
        (dict(), dict(gate_granularities=["heads", "channels"]), ValueError, "gate_granularities"),
        (dict(layer_mapping="nearest"), None, ValueError, "layer_mapping"),
    ],
)
def test_bad_configuration_fails_at_build_naming_the_key(
    tmp_path, teacher_dir, model_conf, encoder_overrides, error, key
):
    config = _student_config(tmp_path, teacher_dir, encoder_overrides=encoder_overrides, **model_conf)
    with pytest.raises(error, match=key):
        _build(config)


def test_unreadable_teacher_checkpoint(tmp_path, teacher_dir):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="teacher_model_file"):
        _build(_student_config(tmp_path, teacher_dir, teacher_model_file=str(bad)))


def test_distillation_only_mode_for_shrunk_students(tmp_path, teacher_dir):
    from espnet_prune.structure import BlockStructure

    blocks = [BlockStructure(2, 10, 20, 8).to_dict()] * 3
    config = _student_config(
        tmp_path, teacher_dir, encoder="pruned_conformer",
        encoder_overrides={"block_structures": blocks}, target=None,
    )
    model = _build(config)
    assert not model.pruning_mode
    assert not hasattr(model.pruning, "lambda1")
    loss, stats, _ = model.train()(*_batch())
    assert "expected_sparsity" not in stats and torch.isfinite(loss)
    with pytest.raises(ValueError, match="model_conf.target is only for pruning"):
        _build(_student_config(
            tmp_path, teacher_dir, encoder="pruned_conformer",
            encoder_overrides={"block_structures": blocks},
        ))


def _with_gated_decoder(path, target):
    import yaml

    conf = yaml.safe_load(path.read_text())
    conf["decoder"] = "gated_transformer"
    conf["model_conf"]["target"] = target
    path.write_text(yaml.safe_dump(conf))
    return path


def test_whole_model_pruning_gates_encoder_front_end_and_decoder(tmp_path, teacher_dir):
    model = _build(_with_gated_decoder(_student_config(tmp_path, teacher_dir), {"params": 0.4}))
    assert set(model.selector.parts) == {"encoder", "decoder"}
    # the student is the teacher (decoder included) before pruning moves the gates
    teacher = model.teacher.state_dict()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in teacher.items())
    model.train()
    loss, stats, _ = model(*_batch())
    loss.backward()
    for part in (model.encoder.embed, model.decoder):
        grads = [p.grad for p in part.gate_parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert abs(model.eval_sparsity() - 0.4) <= model.selector.error_bound()


def test_scoped_target_with_gates_outside_its_scope_is_refused(tmp_path, teacher_dir):
    config = _with_gated_decoder(_student_config(tmp_path, teacher_dir), {"encoder_params": 0.4})
    with pytest.raises(ValueError, match=r"model_conf.target.encoder_params covers the encoder only"):
        _build(config)
