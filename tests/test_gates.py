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
    # exactly the round(E[#kept]) gates of largest log_alpha are kept, all with z > 0
    assert sorted(kept.tolist()) == sorted(top.tolist())
    # each at the Monte Carlo median of its train-mode samples given z > 0
    gate.train()
    samples = torch.stack([gate.sample().detach() for _ in range(20000)])
    for i in top.tolist():
        open_samples = samples[:, i][samples[:, i] > 0]
        assert abs(open_samples.median().item() - z[i].item()) < 0.03, i


def test_confident_gates_are_exactly_one_in_eval():
    gate = HardConcreteGate(3, GateConfig(init_keep_prob=0.99, init_std=0.0)).eval()
    assert torch.equal(gate(), torch.ones(3))


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
