"""Hard-concrete gate: probabilities and deterministic masks against Monte Carlo."""

import math

import pytest
import torch

from espnet_prune.gates import GateConfig, HardConcreteGate


def test_keep_prob_matches_sampling_frequency():
    torch.manual_seed(0)
    gate = HardConcreteGate(5, GateConfig(init_std=0.0))
    gate.log_alpha.data = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0])
    samples = torch.stack([gate.sample().detach() for _ in range(20000)])
    freq = (samples > 0).float().mean(0)
    assert torch.allclose(freq, gate.keep_prob().detach(), atol=0.015)
    # hard zeros and ones both occur: the stretch makes exact 0/1 reachable
    assert (samples == 0).any() and (samples == 1).any()


def test_init_keep_prob_is_honoured():
    for p in (0.5, 0.9, 0.99):
        gate = HardConcreteGate(1000, GateConfig(init_keep_prob=p, init_std=0.0))
        assert gate.keep_prob().mean().item() == pytest.approx(p, abs=1e-5)


def test_eval_mask_keeps_the_selection_at_open_medians():
    torch.manual_seed(1)
    gate = HardConcreteGate(10, GateConfig())
    gate.log_alpha.data = torch.linspace(-4, 4, 10)[torch.randperm(10)]
    gate.eval()
    keep = torch.tensor([7, 2, 5, 0])  # any selection, including closed gates
    z = gate(keep)
    # exactly the selected gates are non-zero, and every selected gate is > 0
    assert sorted(torch.nonzero(z > 0).flatten().tolist()) == sorted(keep.tolist())
    assert torch.equal(z[keep], gate.kept_values(keep))
    # each at the Monte Carlo median of its train-mode samples given z > 0
    gate.train()
    samples = torch.stack([gate.sample().detach() for _ in range(20000)])
    for i in keep.tolist():
        open_samples = samples[:, i][samples[:, i] > 0]
        if open_samples.numel() > 200:  # a nearly always closed gate has too few samples
            assert abs(open_samples.median().item() - z[i].item()) < 0.03, i


def test_confident_gates_are_exactly_one_in_eval():
    gate = HardConcreteGate(3, GateConfig(init_keep_prob=0.99, init_std=0.0)).eval()
    assert torch.equal(gate(torch.arange(3)), torch.ones(3))
    assert torch.equal(gate(torch.tensor([1])), torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(gate(torch.arange(0)), torch.zeros(3))
    module = HardConcreteGate(1, GateConfig(init_keep_prob=0.99, init_std=0.0)).eval()
    assert module.module_value(True).item() == 1.0 and module.module_value(False).item() == 0.0


def test_eval_mode_is_deterministic_and_train_mode_samples():
    gate = HardConcreteGate(8)
    gate.train()
    assert not torch.equal(gate(), gate())
    gate.eval()
    keep = torch.tensor([1, 4])
    assert torch.equal(gate(keep), gate(keep))
    with pytest.raises(ValueError, match="kept indices"):
        gate()  # the eval-mode mask belongs to a model-wide selection


def test_espnet_initialize_does_not_zero_log_alpha():
    from espnet2.torch_utils.initialize import initialize

    module = torch.nn.Module()
    module.gate = HardConcreteGate(16, GateConfig(init_keep_prob=0.95))
    module.gate.log_alpha.data.zero_()
    initialize(module, "xavier_uniform")
    assert module.gate.keep_prob().mean().item() == pytest.approx(0.95, abs=0.01)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="init_keep_prob"):
        GateConfig(init_keep_prob=1.0)
    with pytest.raises(ValueError, match="tempreature"):
        GateConfig.from_dict({"tempreature": 0.5})
    cfg = GateConfig.from_dict({"temperature": 0.5})
    assert cfg.log_ratio == pytest.approx(0.5 * math.log(0.1 / 1.1))
