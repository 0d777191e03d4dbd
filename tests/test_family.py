"""A family of sizes trained together (espnet_prune.family): the shared shift of the gates,
its solution for each target, its implicit gradient, the members' nested structures and the
family mode of the prune_espnet model and of the shrink command."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import conftest  # noqa: F401 - NLTK_DATA stub before ESPnet is imported
from espnet_prune.family import GateFamily, member_selector
from espnet_prune.gates import GateConfig, GateShift, HardConcreteGate
from espnet_prune.target_kinds import middle_target, parse_targets
from espnet_prune.targets import CostContext, build_selector
from test_gated_decoder import _dense_twin, _shrink_model, gated_asr, half_largest_unit  # noqa: F401
from test_prune_model import _args, _batch, _build, _student_config, teacher_dir  # noqa: F401

CTX = CostContext(seconds=2.0, frames_per_second=100.0, tokens=7)


def _gates(model):
    return [m for m in model.modules() if isinstance(m, HardConcreteGate)]


def _unshifted_copy(model, b: float):
    """The reference: a copy of ``model`` with ``b`` added to every log_alpha and no shift."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for gate in _gates(ref):
            gate.shift = None
            gate.log_alpha += b
    return ref


def test_a_shifted_gate_is_the_gate_with_shifted_log_alpha():
    gate = HardConcreteGate(7, GateConfig(init_std=2.0))
    plain = copy.deepcopy(gate)
    gate.shift = GateShift(torch.tensor(-1.3))
    with torch.no_grad():
        plain.log_alpha -= 1.3
    assert torch.allclose(gate.keep_prob(), plain.keep_prob(), rtol=0, atol=1e-7)
    assert torch.allclose(gate.open_median(), plain.open_median(), rtol=0, atol=1e-7)
    torch.manual_seed(3)
    a = gate.sample()
    torch.manual_seed(3)
    assert torch.allclose(a, plain.sample(), rtol=0, atol=1e-7)
    keep = torch.tensor([0, 4, 5])
    assert torch.allclose(gate.eval_mask(keep), plain.eval_mask(keep), rtol=0, atol=1e-7)
    assert float(gate.shift) == pytest.approx(-1.3)


@pytest.mark.parametrize("kind", ["params", "macs"])
def test_each_target_has_the_shift_that_meets_its_budget(gated_asr, kind):
    """The solved shift, added to every log_alpha of a plain copy, gives an expected sparsity
    equal to the target; its slope matches a finite difference; cold and warm starts agree."""
    model, _ = gated_asr
    family = GateFamily(model, kind, CTX)
    assert len(family.gates) == len(_gates(model)) and len(family.gates) > 10
    for target in (0.7, 0.1, 0.5, 0.3):  # warm starts from the nearest solved target
        b, slope = family.solve(target)
        cold, _ = GateFamily(copy.deepcopy(model), kind, CTX).solve(target)
        assert abs(b - cold) <= 1e-3
        with torch.no_grad():
            ref = build_selector(_unshifted_copy(model, b), kind, None, CTX)
            assert abs(float(ref.expected_sparsity()) - target) <= 2e-5
            h = 1e-2
            up = float(build_selector(_unshifted_copy(model, b + h), kind, None, CTX).expected_cost())
            down = float(build_selector(_unshifted_copy(model, b - h), kind, None, CTX).expected_cost())
        assert slope == pytest.approx((up - down) / (2 * h), rel=1e-2)
    assert float(family.shift) == 0.0  # solving leaves the gates where they were


def test_an_unreachable_target_is_an_error_naming_it(gated_asr):
    model, _ = gated_asr
    family = GateFamily(model, "params", CTX)
    with pytest.raises(ValueError, match=r"model_conf.target.params=0.99: no shift"):
        family.solve(0.99)  # the embeddings, CTC and output layers alone are more than 1 %


def test_the_shift_carries_the_implicit_gradient(gated_asr):
    """The expected cost at a target's differentiable shift is constant along the gates (its
    total gradient vanishes), and the shift's gradient matches finite differences of the
    solution."""
    model, _ = gated_asr
    family = GateFamily(model, "params", CTX)
    params = [g.log_alpha for g in family.gates]
    b = family.offset(0.5)
    assert abs(float(b) - family.solve(0.5)[0]) <= 1e-6
    grads = torch.autograd.grad(b, params, retain_graph=True)
    family.set(b)
    cost = family.selector.expected_cost()
    total = torch.autograd.grad(cost, params)
    family.set(0.0)
    partial = torch.autograd.grad(family.selector.expected_cost(), params)
    flat_total = torch.cat([g.reshape(-1) for g in total]).abs().max()
    flat_partial = torch.cat([g.reshape(-1) for g in partial]).abs().max()
    assert flat_partial > 10.0 and flat_total <= 1e-4 * flat_partial
    # finite differences on the gates that move the solution most
    order = sorted(((float(g.abs().max()), i) for i, g in enumerate(grads)), reverse=True)[:3]
    for _, i in order:
        j = int(grads[i].abs().argmax())
        h = 0.05
        with torch.no_grad():
            params[i][j] += h
            up = GateFamily(model, "params", CTX).solve(0.5)[0]
            params[i][j] -= 2 * h
            down = GateFamily(model, "params", CTX).solve(0.5)[0]
            params[i][j] += h
        assert float(grads[i][j]) == pytest.approx((up - down) / (2 * h), rel=0.05)


@pytest.mark.parametrize("kind", ["params", "macs"])
def test_members_nest_and_keep_their_own_gate_values(gated_asr, kind):
    """Each member: within the rule's bound and a fixed cap of its target, nested in every
    larger member, kept gates at their open medians at the member's own shift, and its
    shrunk model of its exact cost (params) and the gated model's outputs."""
    model, args = gated_asr
    dense = _dense_twin(args)
    cap = half_largest_unit(dense, kind, CTX.input_frames, 7)
    members = {}
    speech = torch.randn(2, 120, 20)
    lengths = torch.tensor([120, 90])
    for target in (0.7, 0.5, 0.3):
        selector = member_selector(model, kind, target, 0.5, CTX)
        err = abs(selector.achieved_sparsity() - target)
        assert err <= selector.error_bound() and err <= cap / selector.dense_cost()
        members[target] = {name: {k: set(v.tolist()) for k, v in keep.items()}
                           for name, keep in selector.selection().items()}
        b = GateFamily(copy.deepcopy(model), kind, CTX).solve(target)[0]
        block = model.encoder.encoders[0]
        keep = selector.for_part(model.encoder)[(0, "ffn1")]
        ref_gate = _unshifted_copy(block.gates["ffn1_units"], b)
        assert torch.allclose(block.gates["ffn1_units"].kept_values(keep), ref_gate.kept_values(keep), atol=1e-3)
        shrunk, _ = _shrink_model(model, args)
        if kind == "params":
            assert sum(p.numel() for p in shrunk.parameters()) == selector.achieved_cost()
        with torch.no_grad():
            a, a_lens = model.encode(speech.clone(), lengths)
            s, s_lens = shrunk.encode(speech.clone(), lengths)
        assert torch.equal(a_lens, s_lens) and (a - s).abs().max() <= 1e-4
    for small, large in ((0.7, 0.5), (0.5, 0.3)):
        for name, keep in members[small].items():
            for key, units in keep.items():
                assert units <= members[large][name][key], (small, large, name, key)
    assert members[0.7] != members[0.5] != members[0.3]
    # the reference member is what training validates: the nested rule at its own shift
    ref = build_selector(model, kind, 0.5, CTX, rule="nested")
    family = GateFamily(model, kind, CTX)
    family.attach(ref)
    with family.at(0.5):
        assert {n: {k: set(v.tolist()) for k, v in keep.items()} for n, keep in ref.selection().items()} == members[0.5]


def test_family_targets_parse_and_name_their_errors():
    assert parse_targets({"params": [0.7, 0.3, 0.5]}) == ("params", [0.3, 0.5, 0.7])
    assert parse_targets({"macs": 0.4}) == ("macs", [0.4])
    assert middle_target([0.3, 0.5, 0.7]) == 0.5 and middle_target([0.6, 0.2]) == 0.2
    for bad, msg in (([0.5], "two or more distinct"), ([0.5, 0.5], "two or more distinct"),
                     ([0.3, 1.2], r"model_conf.target.params=1.2 must be in \[0, 1\)"),
                     ([0.3, "x"], "is not a number")):
        with pytest.raises(ValueError, match=msg):
            parse_targets({"params": bad})


def test_the_model_trains_the_members_in_turn_without_a_lagrangian(tmp_path, teacher_dir):
    """Family mode of prune_espnet: each training forward samples the next member at the
    shift that meets its (ramped) target, the gates get gradients, there are no multipliers
    and no third optimizer; eval mode is the middle member."""
    from espnet_prune.task import PruneASRTask, split_parameters

    config = _student_config(tmp_path, teacher_dir, target={"encoder_params": [0.4, 0.2, 0.3]},
                             target_warmup_steps=4)
    model = _build(config)
    assert model.family_targets == [0.2, 0.3, 0.4] and model.target == 0.3
    assert not split_parameters(model)["lagrangian"] and "pruning.lambda1" not in model.state_dict()
    assert len(PruneASRTask.build_optimizers(_args(config), model)) == 2
    speech, lengths, text, text_lengths = _batch()
    model.train()
    seen = []
    for step in range(6):
        torch.manual_seed(step)
        loss, stats, _ = model(speech.clone(), lengths, text.clone(), text_lengths)
        member = [0.2, 0.3, 0.4][step % 3]
        start = float(model.pruning.ramp_start)
        assert float(stats["target_sparsity"]) == pytest.approx(start + (member - start) * min(1.0, step / 4))
        assert abs(float(stats["expected_sparsity"]) - float(stats["target_sparsity"])) <= 2e-5
        assert isinstance(model.family.shift.value, float)  # no graph kept on the gates
        model.zero_grad()
        loss.backward()
        gate_grads = [g.log_alpha.grad for g in model.family.gates]
        assert all(g is not None for g in gate_grads) and sum(float(g.abs().sum()) for g in gate_grads) > 0
        seen.append(float(stats["gate_shift"]))
    assert seen[3] < seen[0]  # a larger target needs a lower shift
    model.eval()
    with torch.no_grad():
        _, stats, _ = model(speech.clone(), lengths, text.clone(), text_lengths)
    assert float(stats["target_sparsity"]) == pytest.approx(0.3)
    assert abs(float(stats["eval_sparsity"]) - 0.3) <= model.selector.error_bound()
    assert abs(float(stats["expected_sparsity"]) - 0.3) <= 2e-5


def test_shrink_command_on_a_family_checkpoint(tmp_path, teacher_dir, capsys):
    """A family checkpoint shrinks at its middle target by default and at any target of its
    kind, each member computing what the gated model computes with that member's selection."""
    from espnet_prune.bin import shrink as shrink_bin
    from espnet_prune.model import plain_asr_args
    from espnet_prune.model_io import build_asr_model, load_train_args, save_asr_model

    config = _student_config(tmp_path, teacher_dir, target={"encoder_params": [0.2, 0.4]})
    model = _build(config)
    torch.manual_seed(1)
    with torch.no_grad():
        for g in model.family.gates:
            g.log_alpha.normal_(1.0, 2.0)
    save_asr_model(tmp_path / "gated", model, _args(config))
    common = ["--asr_train_config", str(tmp_path / "gated/config.yaml"),
              "--asr_model_file", str(tmp_path / "gated/model.pth")]
    speech, lengths = torch.randn(2, 8000), torch.tensor([8000, 6000])
    for target, extra in ((0.2, []), (0.4, ["--target", "encoder_params:0.4"]), (0.3, ["--target", "encoder_params:0.3"])):
        out = tmp_path / f"shrunk_{target}"
        summary = shrink_bin.main(common + extra + ["--output_dir", str(out)])
        assert summary["target"]["sparsity"] == target and summary["target"]["family"] == [0.2, 0.4]
        assert summary["target"]["rule"] == "nested"
        shrunk, _ = build_asr_model(out / "config.yaml", out / "model.pth")
        gated, _ = build_asr_model(plain_asr_args(load_train_args(tmp_path / "gated/config.yaml")),
                                   tmp_path / "gated/model.pth", drop_prefixes=("pruning.",))
        ref = member_selector(gated, "encoder_params", target, 0.2, model.cost_ctx)
        assert summary["target"]["achieved"] == pytest.approx(ref.achieved_sparsity())
        with torch.no_grad():
            a, _ = gated.eval().encode(speech.clone(), lengths)
            s, _ = shrunk.eval().encode(speech.clone(), lengths)
        assert (a - s).abs().max() <= 1e-4
    with pytest.raises(SystemExit, match="a family of encoder_params targets"):
        shrink_bin.main(common + ["--target", "params:0.3", "--output_dir", str(tmp_path / "x")])
    capsys.readouterr()
    assert json.loads((tmp_path / "shrunk_0.3/summary.json").read_text())["target"]["sparsity"] == 0.3


def test_a_fixed_family_trains_each_member_as_it_will_be_shrunk(tmp_path, teacher_dir, capsys):
    """From ``family_fixed_after`` on, the gates are frozen (no gradient) and each training
    forward runs the next member's structure: the encoder's train-mode output equals the
    shrunk member's (batch norm on batch statistics in both)."""
    from espnet_prune.bin import shrink as shrink_bin
    from espnet_prune.model_io import build_asr_model, save_asr_model

    config = _student_config(tmp_path, teacher_dir, target={"encoder_params": [0.2, 0.4]},
                             target_warmup_steps=0, family_fixed_after=2)
    model = _build(config)
    torch.manual_seed(1)
    with torch.no_grad():
        for g in model.family.gates:
            g.log_alpha.normal_(1.0, 2.0)
    speech, lengths, text, text_lengths = _batch()
    model.train()
    for step in range(5):
        loss, stats, _ = model(speech.clone(), lengths, text.clone(), text_lengths)
        model.zero_grad()
        loss.backward()
        fixed = step >= 2
        assert all((g.log_alpha.grad is None) == fixed for g in model.family.gates), step
        assert model.encoder.encoders[0].gates["ffn1_units"].log_alpha.requires_grad != fixed
        assert float(stats["target_sparsity"]) == pytest.approx([0.2, 0.4][step % 2])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    save_asr_model(tmp_path / "gated", model, _args(config))
    for member in (0.2, 0.4):
        out = tmp_path / f"member_{member}"
        shrink_bin.main(["--asr_train_config", str(tmp_path / "gated/config.yaml"), "--asr_model_file",
                         str(tmp_path / "gated/model.pth"), "--target", f"encoder_params:{member}",
                         "--output_dir", str(out)])
        shrunk, _ = build_asr_model(out / "config.yaml", out / "model.pth")
        model.pruning.num_updates.fill_(2 + [0.2, 0.4].index(member))
        assert model.control.before(True) == member
        with torch.no_grad():
            a, a_lens = model.encode(speech.clone(), lengths)
            s, s_lens = shrunk.train().encode(speech.clone(), lengths)
        assert torch.equal(a_lens, s_lens) and (a - s).abs().max() <= 1e-4, member
    capsys.readouterr()
    model.eval()
    with torch.no_grad():
        _, stats, _ = model(speech.clone(), lengths, text.clone(), text_lengths)
    assert float(stats["target_sparsity"]) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="model_conf.family_fixed_after=3: .* for a family target"):
        _build(_student_config(tmp_path, teacher_dir, target={"encoder_params": 0.2}, family_fixed_after=3))
