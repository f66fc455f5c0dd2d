"""The finetuning losses, written against the defects of the authors' release (method.md)."""

from __future__ import annotations

import pytest
import torch

from hypernet.fusion import masked_mean
from hypernet.targets import LoraWeights
from training.losses import IGNORE, alignment_loss, cross_entropy, delta_weights, distill_kl, target_mask


def _logits(seed: int, shape=(2, 5, 11)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3


def test_kl_positive_when_teacher_differs_and_zero_when_equal():
    student, teacher = _logits(0), _logits(1)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert distill_kl(student, teacher, mask, temperature=2.0) > 0.01
    assert distill_kl(student, student.clone(), mask, temperature=2.0).abs() < 1e-6


def test_kl_is_teacher_to_student_times_t_squared():
    student, teacher = _logits(0), _logits(1)
    mask = torch.ones(2, 5, dtype=torch.bool)
    T = 3.0
    p = torch.softmax(teacher / T, -1)
    expected = (p * (p.log() - torch.log_softmax(student / T, -1))).sum(-1).mean() * T**2
    assert torch.allclose(distill_kl(student, teacher, mask, T), expected, atol=1e-5)
    reverse = (torch.softmax(student / T, -1) * (torch.log_softmax(student / T, -1) - p.log())).sum(-1).mean() * T**2
    assert not torch.allclose(expected, reverse, atol=1e-3)  # the direction matters


def test_kl_ignores_positions_outside_the_target_mask():
    student, teacher = _logits(0), _logits(1)
    labels = torch.tensor([[5, 6, IGNORE, IGNORE, IGNORE], [1, 2, 3, 4, IGNORE]])
    mask = target_mask(labels)
    base = distill_kl(student, teacher, mask, 1.0)
    changed = teacher.clone()
    changed[0, 3] += 50.0  # a padding position
    assert torch.equal(distill_kl(student, changed, mask, 1.0), base)
    equal_on_targets = student.clone()
    equal_on_targets[~mask] = teacher[~mask]
    assert distill_kl(teacher, equal_on_targets, mask, 1.0) > 0
    teacher_copy = teacher.clone()
    teacher_copy[mask] = student[mask]
    assert distill_kl(student, teacher_copy, mask, 1.0).abs() < 1e-6


def test_kl_gradient_reaches_only_the_student():
    student = _logits(0).requires_grad_(True)
    teacher = _logits(1).requires_grad_(True)
    distill_kl(student, teacher, torch.ones(2, 5, dtype=torch.bool), 2.0).backward()
    assert student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_cross_entropy_ignores_padding():
    logits = _logits(0)
    labels = torch.tensor([[1, 2, IGNORE, IGNORE, IGNORE], [3, 4, 5, IGNORE, IGNORE]])
    expected = torch.nn.functional.cross_entropy(logits[labels != IGNORE], labels[labels != IGNORE])
    assert torch.allclose(cross_entropy(logits, labels), expected)


# ---- L_ins ------------------------------------------------------------------------------------


def _lora(
    seed: int, batch: int = 2, r: int = 4, d_in: int = 6, d_out: int = 5, scale: float = 2.0, targets: int = 3
) -> LoraWeights:
    g = torch.Generator().manual_seed(seed)
    lora_A = {"g": torch.randn(targets, batch, r, d_in, generator=g)}
    return LoraWeights(lora_A, {"g": torch.randn(targets, batch, d_out, r, generator=g)}, scale)


def test_alignment_zero_for_same_update_with_other_factors_and_scale():
    teacher = _lora(0, r=4, scale=2.0)  # e.g. alpha 8, r 4
    M = torch.randn(4, 4, generator=torch.Generator().manual_seed(5)) + 3 * torch.eye(4)
    # Same delta-W = 2 * B A, written as (B M) (M^-1 A) with scale 0.5 (alpha 2, r 4): factors
    # rescaled by 2 each.
    A = torch.linalg.solve(M, teacher.lora_A["g"]) * 2.0
    B = teacher.lora_B["g"] @ M * 2.0
    other = LoraWeights({"g": A}, {"g": B}, 0.5)
    assert not torch.allclose(other.lora_A["g"], teacher.lora_A["g"])
    assert alignment_loss(other, teacher) < 1e-8


def test_alignment_nonzero_for_transposed_or_swapped_teacher():
    """The release paired generated A with the teacher's lora_B: that targets the transpose."""
    square = _lora(0, d_in=6, d_out=6)
    swapped = LoraWeights({"g": square.lora_B["g"].mT.contiguous()}, {"g": square.lora_A["g"].mT.contiguous()}, square.scale)
    # swapped's update is (B A)^T: a different map unless B A is symmetric.
    assert alignment_loss(swapped, square) > 0.1
    assert alignment_loss(square, square) < 1e-10


def test_alignment_respects_each_sides_scale():
    teacher = _lora(0, scale=2.0)
    same_factors_other_alpha = LoraWeights(teacher.lora_A, teacher.lora_B, 4.0)
    assert alignment_loss(same_factors_other_alpha, teacher) == pytest.approx(1.0, rel=1e-5)  # 2x the update
    zero = LoraWeights({"g": torch.zeros_like(teacher.lora_A["g"])}, teacher.lora_B, 2.0)
    assert alignment_loss(zero, teacher) == pytest.approx(1.0, rel=1e-6)  # relative: zero update scores 1


def test_delta_weights_uses_scale_b_at_a():
    lora = _lora(3, scale=1.5)
    dense = delta_weights(lora)["g"]
    assert torch.allclose(dense[1, 0], 1.5 * lora.lora_B["g"][1, 0] @ lora.lora_A["g"][1, 0])


def test_alignment_gradient_reaches_the_generated_side_only():
    """The teacher's factors may require grad (a trainable PEFT model, a shared tensor): the loss
    still treats them as constants, in the distance and in the normaliser alike."""
    source = _lora(0)
    teacher_A = source.lora_A["g"].clone().requires_grad_(True)
    teacher_B = source.lora_B["g"].clone().requires_grad_(True)
    teacher = LoraWeights({"g": teacher_A}, {"g": teacher_B}, source.scale)
    A = source.lora_A["g"].clone().requires_grad_(True)
    B = (source.lora_B["g"] + 0.1).requires_grad_(True)
    loss = alignment_loss(LoraWeights({"g": A}, {"g": B}, source.scale), teacher)
    loss.backward()
    assert A.grad.abs().sum() > 0 and B.grad.abs().sum() > 0
    assert teacher_A.grad is None and teacher_B.grad is None
    assert loss.item() == pytest.approx(alignment_loss(LoraWeights({"g": A}, {"g": B}, source.scale), source).item())


def test_masked_pooling_ignores_padding():
    states = torch.randn(1, 4, 8)
    padded = torch.cat([states, torch.full((1, 3, 8), 100.0)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    assert torch.allclose(masked_mean(padded, mask), states.mean(dim=1), atol=1e-6)
