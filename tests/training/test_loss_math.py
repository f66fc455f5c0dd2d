"""Edges of the finetuning losses (training/losses.py) that tests/training/test_losses.py leaves
open: the target mask itself, defaults, refusals, and the normalisations at their limits.
Expected values are written out by hand or computed with plain torch, never with the code
under test."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from hypernet.targets import LoraWeights
from training.losses import IGNORE, alignment_loss, cross_entropy, distill_kl, target_mask


def logits(seed: int, shape: tuple[int, ...] = (2, 4, 7)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3


def token_kl(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """KL(teacher || student) of one position's distributions at temperature T, times T^2."""
    p, log_q = torch.softmax(teacher / T, -1), torch.log_softmax(student / T, -1)
    return (p * (p.log() - log_q)).sum() * T**2


def test_target_mask_marks_exactly_the_labelled_positions():
    labels = torch.tensor([[4, IGNORE, 0], [IGNORE, 7, IGNORE]])
    assert target_mask(labels).tolist() == [[True, False, True], [False, True, False]]


def test_kl_averages_over_target_tokens_only():
    """A padding position whose distributions differ must not count (the existing test shifts a
    padding position's logits by a constant, which leaves its softmax unchanged)."""
    student, teacher = logits(0), logits(1)
    labels = torch.tensor([[5, 6, IGNORE, IGNORE], [1, IGNORE, IGNORE, IGNORE]])
    mask = target_mask(labels)
    positions = [(0, 0), (0, 1), (1, 0)]
    expected = sum(token_kl(student[i, t], teacher[i, t], 1.0) for i, t in positions) / len(positions)
    assert torch.allclose(distill_kl(student, teacher, mask), expected, atol=1e-5)


def test_kl_with_a_single_target_token_is_that_tokens_kl():
    student, teacher = logits(2), logits(3)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[1, 2] = True
    assert torch.allclose(distill_kl(student, teacher, mask, 2.0), token_kl(student[1, 2], teacher[1, 2], 2.0), atol=1e-5)
    assert distill_kl(student, teacher, torch.zeros(2, 4, dtype=torch.bool)) == 0  # no target: no signal, no NaN


def test_kl_default_temperature_is_one():
    student, teacher = logits(4), logits(5)
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert torch.equal(distill_kl(student, teacher, mask), distill_kl(student, teacher, mask, 1.0))
    assert not torch.allclose(distill_kl(student, teacher, mask), distill_kl(student, teacher, mask, 2.0))


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_kl_refuses_a_temperature_that_is_not_positive(temperature: float):
    student = logits(0)
    with pytest.raises(ValueError, match=f"temperature must be > 0, got {temperature}"):
        distill_kl(student, student, torch.ones(2, 4, dtype=torch.bool), temperature)


def test_kl_refuses_logits_of_different_shapes():
    with pytest.raises(ValueError, match=r"student logits \(2, 4, 7\) vs teacher \(2, 3, 7\)"):
        distill_kl(logits(0), logits(1, (2, 3, 7)), torch.ones(2, 4, dtype=torch.bool))


def test_kl_is_float32_for_half_precision_logits():
    student, teacher = logits(0).bfloat16(), logits(1).bfloat16()
    mask = torch.ones(2, 4, dtype=torch.bool)
    value = distill_kl(student, teacher, mask, 2.0)
    assert value.dtype == torch.float32
    assert torch.allclose(value, distill_kl(student.float(), teacher.float(), mask, 2.0), atol=1e-5)


def test_cross_entropy_is_the_mean_over_labelled_tokens():
    scores = logits(6)
    labels = torch.tensor([[1, IGNORE, 3, IGNORE], [IGNORE, IGNORE, 6, 0]])
    picked = [(0, 0, 1), (0, 2, 3), (1, 2, 6), (1, 3, 0)]
    expected = -sum(F.log_softmax(scores[i, t], -1)[c] for i, t, c in picked) / len(picked)
    assert torch.allclose(cross_entropy(scores, labels), expected, atol=1e-5)
    assert cross_entropy(scores.bfloat16(), labels).dtype == torch.float32


def one_group(scale: float, size: float, seed: int, batch: int = 2) -> LoraWeights:
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(3, batch, 2, 5, generator=g), torch.randn(3, batch, 4, 2, generator=g)
    return LoraWeights({"g": A * size}, {"g": B * size}, scale)


def test_alignment_is_relative_even_for_a_tiny_teacher_update():
    """lambda2 must mean the same for teachers of any magnitude: the norm clamp only guards 0/0."""
    teacher = one_group(2.0, 1e-3, seed=0)  # update norm^2 ~ 1e-10, far below 1
    zero = LoraWeights({"g": torch.zeros(3, 2, 2, 5)}, teacher.lora_B, 2.0)
    assert alignment_loss(zero, teacher) == pytest.approx(1.0, rel=1e-4)
    doubled = LoraWeights(teacher.lora_A, teacher.lora_B, 4.0)
    assert alignment_loss(doubled, teacher) == pytest.approx(1.0, rel=1e-4)


def test_alignment_averages_per_adapter_relative_errors():
    """Each adapter of the batch is relative to its own teacher: a big teacher does not drown a small one."""
    teacher = one_group(1.0, 1.0, seed=1)
    teacher.lora_B["g"][:, 1] *= 100.0
    generated_A = teacher.lora_A["g"].clone()
    generated_A[:, 0] = 0  # adapter 0: zero update (relative error 1); adapter 1: exact (0)
    assert alignment_loss(LoraWeights({"g": generated_A}, teacher.lora_B, 1.0), teacher) == pytest.approx(0.5, rel=1e-5)


def test_alignment_refuses_adapters_of_different_groups():
    generated = one_group(1.0, 1.0, seed=0)
    teacher = LoraWeights({"h": generated.lora_A["g"]}, {"h": generated.lora_B["g"]}, 1.0)
    with pytest.raises(ValueError, match=r"adapter groups differ: \['g'\] vs \['h'\]"):
        alignment_loss(generated, teacher)


def test_alignment_gradient_never_reaches_the_teacher():
    """The teacher side is a constant even when its tensors require grad (e.g. a teacher that is
    itself being trained elsewhere): the loss must not push it towards the student."""
    teacher = one_group(2.0, 1.0, seed=2)
    teacher_A = teacher.lora_A["g"].clone().requires_grad_(True)
    teacher_B = teacher.lora_B["g"].clone().requires_grad_(True)
    generated = one_group(2.0, 1.0, seed=3)
    generated_A = generated.lora_A["g"].clone().requires_grad_(True)
    teacher_side = LoraWeights({"g": teacher_A}, {"g": teacher_B}, 2.0)
    loss = alignment_loss(LoraWeights({"g": generated_A}, generated.lora_B, 2.0), teacher_side)
    loss.backward()
    assert generated_A.grad is not None and generated_A.grad.abs().sum() > 0
    assert teacher_A.grad is None and teacher_B.grad is None
