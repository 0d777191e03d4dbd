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


def test_deterministic_mask_keeps_expected_number_of_top_gates():
    torch.manual_seed(1)
    gate = HardConcreteGate(10, GateConfig())
    gate.log_alpha.data = torch.linspace(-4, 4, 10)[torch.randperm(10)]
    gate.eval()
    z = gate()
    n_keep = round(gate.keep_prob().sum().item())
    kept = torch.nonzero(z > 0).flatten()
    top = torch.topk(gate.log_alpha, n_keep).indices
    # median value of a kept gate: clamp(sigmoid(la / beta) * 1.2 - 0.1, 0, 1)
    median = (torch.sigmoid(gate.log_alpha * 1.5) * 1.2 - 0.1).clamp(0, 1)
    assert set(kept.tolist()) <= set(top.tolist())
    assert torch.allclose(z[top], median[top])
    assert (z[[i for i in range(10) if i not in top.tolist()]] == 0).all()
    # the median is the Monte Carlo median of the train-mode samples
    gate.train()
    samples = torch.stack([gate.sample().detach() for _ in range(4001)])
    assert torch.allclose(samples.median(0).values[top], median[top], atol=0.03)


def test_eval_mode_is_deterministic_and_train_mode_samples():
    gate = HardConcreteGate(8)
    gate.train()
    assert not torch.equal(gate(), gate())
    gate.eval()
    assert torch.equal(gate(), gate())


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
