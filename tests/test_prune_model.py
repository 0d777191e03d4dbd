"""The prune_espnet model and task: teacher handling, loss terms, optimizers, config errors."""

import contextlib
from typing import Dict, Iterator

import pytest
import torch
import torch.nn.functional as F

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


def _espnet_teacher(teacher_dir):
    """The teacher as plain ESPnet loads it (no plugin code), in eval mode."""
    from espnet2.tasks.asr import ASRTask

    model, _ = ASRTask.build_model_from_file(teacher_dir / "config.yaml", teacher_dir / "model.pth", "cpu")
    return model.eval()


@contextlib.contextmanager
def _record_outputs(modules: Dict[str, torch.nn.Module]) -> Iterator[Dict[str, list]]:
    """Every output of each named module during the block (student side of the loss)."""
    seen: Dict[str, list] = {name: [] for name in modules}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: seen[name].append(out))
               for name, m in modules.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _kl(student_logits, teacher_logits, mask, tau):
    """tau^2 * mean over masked positions of KL(softmax(t / tau) || softmax(s / tau)), float64."""
    log_t = torch.log_softmax(teacher_logits.double() / tau, -1)
    log_s = torch.log_softmax(student_logits.double() / tau, -1)
    per_pos = (log_t.exp() * (log_t - log_s)).sum(-1)
    return per_pos[mask].mean() * tau**2


def _mse(a, b, mask):
    """Mean over valid frames and features, float64."""
    return ((a.double() - b.double()) ** 2)[mask].mean()


def test_loss_terms_against_the_teacher_run_by_hand(tmp_path, teacher_dir):
    """Every loss term recomputed from the student's outputs and an ESPnet teacher run here."""
    tau, ctc_w, weights = 2.0, 0.3, (0.7, 0.2, 0.1)
    model = _build(_student_config(tmp_path, teacher_dir, asr_weight=weights[0], pred_weight=weights[1],
                                   layer_weight=weights[2], temperature=tau, distill_layers=[1, 3]))
    model.train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.pruning.lambda1.fill_(0.3)
        model.pruning.lambda2.fill_(0.5)
        # a map far from identity, so that the layer term really goes through it
        model.pruning.distiller.proj.weight.add_(0.3 * torch.randn(32, 32, generator=g))
        model.pruning.distiller.proj.bias.normal_(0, 0.1, generator=g)
        # student output layers away from the teacher's: KL terms far above float32 rounding
        for layer in (model.ctc.ctc_lo, model.decoder.output_layer):
            layer.weight.add_(0.5 * torch.randn(layer.weight.shape, generator=g))
    speech, lengths, text, text_lengths = _batch()
    blocks = {f"block{i}": b for i, b in enumerate(model.encoder.encoders)}
    with _record_outputs({"encoder": model.encoder, "decoder": model.decoder, **blocks}) as seen:
        loss, stats, _ = model(speech, lengths, text.clone(), text_lengths)
    enc, enc_lens, _ = seen["encoder"][0]
    dec = seen["decoder"][0][0]
    s_hidden = [seen[f"block{i}"][0][0][0] for i in range(3)]  # ((x, pos_emb), mask)
    assert not torch.equal(s_hidden[-1], s_hidden[0])

    # the teacher, run here as ESPnet runs it (its own frontend: no specaug in this config)
    teacher = _espnet_teacher(teacher_dir)
    t_blocks = {f"block{i}": b for i, b in enumerate(teacher.encoder.encoders)}
    with torch.no_grad(), _record_outputs(t_blocks) as t_seen:
        t_enc, t_lens = teacher.encode(speech, lengths)
    t_hidden = [t_seen[f"block{i}"][0][0][0] for i in range(3)]
    assert torch.equal(t_lens, enc_lens)
    frames = torch.arange(enc.size(1))[None] < enc_lens[:, None]

    # teacher forcing by hand: <sos> + tokens (padded with <eos>) -> tokens + <eos> (padded with -1)
    sos = model.sos
    ys_in = torch.full((2, 6), sos, dtype=torch.long)
    ys_out = torch.full((2, 6), -1, dtype=torch.long)
    for b, n in enumerate(text_lengths.tolist()):
        ys_in[b, 1:n + 1] = text[b, :n]
        ys_out[b, :n] = text[b, :n]
        ys_out[b, n] = sos
    with torch.no_grad():
        t_dec, _ = teacher.decoder(t_enc, t_lens, ys_in, text_lengths + 1)
        t_ctc = teacher.ctc.ctc_lo(t_enc)
    s_ctc = model.ctc.ctc_lo(enc)
    tokens = ys_out != -1

    # L_asr: CTC and cross entropy, each summed over the batch and divided by the batch size
    log_probs = torch.log_softmax(s_ctc.double(), -1).transpose(0, 1)
    targets = torch.cat([text[b, :n] for b, n in enumerate(text_lengths.tolist())])
    loss_ctc = F.ctc_loss(log_probs, targets, enc_lens, text_lengths, reduction="sum", zero_infinity=True) / 2
    log_p = torch.log_softmax(dec.double(), -1).gather(-1, ys_out.clamp(min=0)[..., None])[..., 0]
    loss_att = -log_p[tokens].sum() / 2
    loss_asr = ctc_w * loss_ctc + (1 - ctc_w) * loss_att
    # L_pred: KL from the teacher, at temperature tau, on CTC frames and decoder tokens
    kl_ctc, kl_att = _kl(s_ctc, t_ctc, frames, tau), _kl(dec, t_dec, tokens, tau)
    loss_pred = ctc_w * kl_ctc + (1 - ctc_w) * kl_att
    # L_layer: teacher blocks 1 and 3, each matched to the student block (at or after the previous
    # match) whose output through the map is closest
    proj = model.pruning.distiller.proj
    mapped = [h.double() @ proj.weight.double().T + proj.bias.double() for h in s_hidden]
    loss_layer, lowest, matched = 0.0, 0, []
    for t in (1, 3):
        errors = [_mse(mapped[s], t_hidden[t - 1], frames) for s in range(3)]
        s = min(range(lowest, 3), key=lambda i: float(errors[i]))
        loss_layer, lowest = loss_layer + errors[s], s
        matched.append(s + 1)
    assert [int(stats[f"matched_layer{t}"]) for t in (1, 3)] == matched

    # float32 model against float64 references: means of O(100) float32 terms of similar size
    # (relative rounding ~1e-6), well inside 1e-4
    for name, ref in (("loss_ctc", loss_ctc), ("loss_att", loss_att), ("kl_ctc", kl_ctc), ("kl_att", kl_att),
                      ("loss_asr", loss_asr), ("loss_pred", loss_pred), ("loss_layer", loss_layer)):
        assert stats[name].item() == pytest.approx(float(ref), rel=1e-4), name
    assert min(float(kl_ctc), float(kl_att), float(loss_layer)) > 0.01  # not trivially 0
    gap = (stats["expected_sparsity"] - stats["target_sparsity"]).item()
    expected_loss = (
        weights[0] * float(loss_asr) + weights[1] * float(loss_pred) + weights[2] * float(loss_layer)
        + 0.3 * gap + (0.5 + model.sparsity_p_gain / 2) * gap**2
    )
    assert loss.item() == pytest.approx(expected_loss, rel=1e-4)
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


def test_teacher_sees_the_students_specaugmented_features(tmp_path, teacher_dir):
    import yaml

    config = _student_config(tmp_path, teacher_dir)
    conf = yaml.safe_load(config.read_text())
    conf["specaug"] = "specaug"  # masks at least 4 of the 20 mel bins and 5 of the 51 frames
    conf["specaug_conf"] = dict(
        apply_time_warp=True, time_warp_window=5, apply_freq_mask=True, freq_mask_width_range=[4, 8],
        num_freq_mask=2, apply_time_mask=True, time_mask_width_range=[5, 10], num_time_mask=2,
    )
    config.write_text(yaml.safe_dump(conf))
    model = _build(config)
    seen = {}
    hooks = [enc.register_forward_pre_hook(lambda _m, args, name=name: seen.__setitem__(name, args[0].clone()))
             for name, enc in (("student", model.encoder), ("teacher", model.teacher.encoder))]
    speech, lengths, text, text_lengths = _batch()
    with torch.no_grad():
        clean, _ = _espnet_teacher(teacher_dir)._extract_feats(speech, lengths)  # no SpecAug: eval mode
    torch.manual_seed(0)
    model.train()(speech, lengths, text.clone(), text_lengths)
    assert not torch.equal(seen["student"], clean)  # augmented ...
    assert torch.equal(seen["teacher"], seen["student"])  # ... and the teacher got the same features
    with torch.no_grad():
        model.eval()(speech, lengths, text.clone(), text_lengths)
    assert torch.equal(seen["student"], clean) and torch.equal(seen["teacher"], clean)
    for h in hooks:
        h.remove()


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
    # The exact-target rule's guarantee, derived from the architecture: half the largest unit's
    # parameters over the dense count (numel of the ESPnet teacher). Units (d = 32), with the
    # fixed part (pre-norm 2d + output bias d) that the first kept unit of a module pays:
    d, fixed = 32, 3 * 32
    units = {
        "encoder head (4 of 8 dims)": 3 * (8 * d + 8) + 8 * d + 2 * 8 + d * 8 + fixed,  # q/k/v, pos, u/v, out
        "encoder FFN unit": (d + 1) + d + fixed,
        "encoder conv channel (kernel 7)": 2 * (d + 1) + (7 + 1) + 2 + d + fixed,  # GLU rows, depthwise, BN
        "front-end conv1 channel": 3 * 3 + 1 + 3 * 3 * d,  # its filter, bias, its weights in conv2
        "front-end conv2 channel": 3 * 3 * d + 1 + 4 * d,  # 20 mels -> 4 rows into the output Linear
        "decoder FFN unit": (d + 1) + d + fixed,
        "decoder head (2 of 16 dims)": 3 * (16 * d + 16) + d * 16 + fixed,
    }
    dense = sum(p.numel() for p in model.teacher.parameters())
    cap = max(units.values()) / (2 * dense)  # 2192 / (2 * 71730) = 0.0153
    assert model.selector.error_bound() == pytest.approx(cap, rel=1e-12)
    assert abs(model.eval_sparsity() - 0.4) <= cap
    # ... in any gate state, not only the near-uniform initial one
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        with torch.no_grad():
            for part in model.selector.parts.values():
                for p in part.gate_parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 3)
        assert abs(model.eval_sparsity() - 0.4) <= cap


def test_scoped_target_with_gates_outside_its_scope_is_refused(tmp_path, teacher_dir):
    config = _with_gated_decoder(_student_config(tmp_path, teacher_dir), {"encoder_params": 0.4})
    with pytest.raises(ValueError, match=r"model_conf.target.encoder_params covers the encoder only"):
        _build(config)
