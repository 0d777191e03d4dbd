"""Distillation losses against direct computations."""

import pytest
import torch
import torch.nn.functional as F

from espnet_prune.distill import LayerDistiller, kl_divergence, masked_mse


def test_kl_divergence_matches_torch_kl_div():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    tau = 2.0
    ref = F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1), log_target=True, reduction="none").sum(-1)
    expected = ref[mask].mean() * tau**2
    assert kl_divergence(s, t, mask, tau).item() == pytest.approx(expected.item(), rel=1e-5)
    assert kl_divergence(t, t, mask, tau).item() == pytest.approx(0.0, abs=1e-6)


def test_masked_mse_ignores_padding():
    a, b = torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)
    b[0, :2] = 1.0
    b[1, 3] = 100.0  # padded frame
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    assert masked_mse(a, b, mask).item() == pytest.approx(6 / (7 * 3))


def test_dynamic_mapping_finds_the_matching_student_layers_in_order():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 6, 8) for _ in range(6)]
    # student block 2 holds teacher block 3, student block 5 holds teacher block 6
    student = [torch.randn(2, 6, 8) for _ in range(6)]
    student[1] = teacher[2] + 0.01 * torch.randn(2, 6, 8)
    student[4] = teacher[5] + 0.01 * torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    dyn = LayerDistiller(8, [3, 6], 6, "dynamic")
    loss, chosen = dyn(student, teacher, mask)
    assert chosen == [2, 5]
    assert loss.item() < 1e-3
    fixed = LayerDistiller(8, [3, 6], 6, "fixed")
    loss_fixed, chosen_fixed = fixed(student, teacher, mask)
    assert chosen_fixed == [3, 6]
    assert loss_fixed.item() == pytest.approx(
        (masked_mse(student[2], teacher[2], mask) + masked_mse(student[5], teacher[5], mask)).item(), rel=1e-5
    )


def test_dynamic_mapping_keeps_order():
    teacher = [torch.full((1, 2, 4), float(i)) for i in range(4)]
    student = [torch.full((1, 2, 4), v) for v in (3.0, 1.0, 0.0, 2.0)]
    mask = torch.ones(1, 2, dtype=torch.bool)
    _, chosen = LayerDistiller(4, [2, 4], 4, "dynamic")(student, teacher, mask)
    # teacher 2 (value 1) -> student 2; teacher 4 (value 3) may not go back to student 1
    assert chosen == [2, 4]


def test_bad_mapping_names_the_key():
    with pytest.raises(ValueError, match="layer_mapping"):
        LayerDistiller(8, [1], 2, "greedy")
    with pytest.raises(ValueError, match="distill_layers"):
        LayerDistiller(8, [3], 2, "fixed")
