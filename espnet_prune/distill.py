"""Distillation losses: prediction-layer KL and layerwise MSE with layer matching.

Shapes: hidden states ``(B, T, d)``; ``frame_mask`` ``(B, T)`` with 1 on valid
frames; logits ``(B, L, V)`` with ``token_mask`` ``(B, L)``.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

LAYER_MAPPINGS = ("dynamic", "fixed")


def kl_divergence(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float
) -> Tensor:
    """``tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))`` averaged over ``mask``.

    Args:
        student_logits / teacher_logits: ``(..., V)``.
        mask: ``(...)`` 1 where a position counts.
    """
    t = temperature
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    mask = mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp(min=1.0) * t * t


def masked_mse(a: Tensor, b: Tensor, frame_mask: Tensor) -> Tensor:
    """Mean squared error over valid frames and all features."""
    m = frame_mask.to(a.dtype)[..., None]
    return ((a - b) ** 2 * m).sum() / (m.sum().clamp(min=1.0) * a.size(-1))


class LayerDistiller(torch.nn.Module):
    """MSE between selected teacher blocks and student blocks through a learned map.

    Args:
        size: hidden dimension d.
        teacher_layers: 1-based indices of the teacher blocks to match.
        num_student_layers: number of student blocks.
        mapping: ``fixed`` (teacher block i <-> student block i; the student
            starts as a copy of the teacher) or ``dynamic`` (CoFi: each teacher
            block is matched, per step, to the student block with least MSE,
            keeping order: the chosen student indices never decrease).

    The map is one ``Linear(d, d)`` shared by all pairs, initialised to identity.
    """

    def __init__(
        self, size: int, teacher_layers: Sequence[int], num_student_layers: int, mapping: str = "dynamic"
    ) -> None:
        super().__init__()
        if mapping not in LAYER_MAPPINGS:
            raise ValueError(
                f"model_conf.layer_mapping={mapping!r}: choose from {list(LAYER_MAPPINGS)}"
            )
        bad = [i for i in teacher_layers if not 1 <= int(i) <= num_student_layers]
        if bad:
            raise ValueError(
                f"model_conf.distill_layers {bad} outside 1..{num_student_layers}"
            )
        self.teacher_layers = [int(i) for i in teacher_layers]
        self.mapping = mapping
        self.proj = torch.nn.Linear(size, size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(self.proj.in_features))
            self.proj.bias.zero_()

    def espnet_initialization_fn(self) -> None:
        """Called by ``espnet2.torch_utils.initialize``: keep the identity init."""
        self.reset_parameters()

    def forward(
        self, student: List[Tensor], teacher: List[Tensor], frame_mask: Tensor
    ) -> Tuple[Tensor, List[int]]:
        """Return the summed MSE over matched pairs and the student index (1-based) of each."""
        if not self.teacher_layers:
            return student[0].new_zeros(()), []
        mapped = [self.proj(h) for h in student]
        total = student[0].new_zeros(())
        chosen: List[int] = []
        lowest = 0
        for t in self.teacher_layers:
            target = teacher[t - 1].detach()
            if self.mapping == "fixed":
                s = t - 1
                loss = masked_mse(mapped[s], target, frame_mask)
            else:
                losses = torch.stack(
                    [masked_mse(mapped[s], target, frame_mask) for s in range(lowest, len(mapped))]
                )
                k = int(torch.argmin(losses.detach()))
                s, loss = lowest + k, losses[k]
                lowest = s
            total = total + loss
            chosen.append(s + 1)
        return total, chosen
