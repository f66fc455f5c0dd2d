"""The three terms of TAGI finetuning: L_ce + lambda1 * L_kl + lambda2 * L_ins.

Written against the defects of the authors' release (../shared/docs/method.md):
- the KL compares the *teacher's* distribution with the student's (the release silently
  replaced the teacher by the student unless a flag was set, making the term zero);
- the alignment compares dense updates delta_W = (alpha / r) * B @ A, each side with its own
  scale, so it neither pairs A with the teacher's lora_B (a transpose) nor depends on how
  the update is factorised.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from hypernet.lora import delta_weight
from hypernet.targets import LoraWeights

IGNORE = -100


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over target positions (labels == -100 are ignored).
    logits: (b, t, vocab), labels: (b, t)."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


def distill_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened token distributions, averaged over
    the target tokens where `mask` is true, times T^2 (Hinton et al.) so that its gradient
    scale does not shrink as T grows. Both logits (b, t, vocab) are aligned on the same
    target positions; the teacher's are treated as constants."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} vs teacher {tuple(teacher_logits.shape)}")
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    per_token = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1)  # (b, t)
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0) * temperature**2


def delta_weights(lora: LoraWeights) -> dict[str, torch.Tensor]:
    """group -> (n_targets, batch, out, in): each adapter's scaled dense update."""
    return {g: delta_weight(lora.lora_A[g].float(), lora.lora_B[g].float(), lora.scale) for g in lora.lora_A}


def alignment_loss(generated: LoraWeights, teacher: LoraWeights) -> torch.Tensor:
    """L_ins: squared distance between generated and instance-trained updates in delta-W space,
    relative to the teacher update's squared norm, averaged over the batch of adapters.

    Relative, so that lambda2 means the same whatever the teachers' magnitude: 1.0 is the
    value of an all-zero generated update. The teacher is a constant."""
    gen, ref = delta_weights(generated), delta_weights(teacher)
    if gen.keys() != ref.keys():
        raise ValueError(f"adapter groups differ: {sorted(gen)} vs {sorted(ref)}")
    diff = sum(((gen[g] - ref[g].detach()) ** 2).sum(dim=(0, 2, 3)) for g in gen)  # (batch,)
    norm = sum((ref[g].detach() ** 2).sum(dim=(0, 2, 3)) for g in gen)
    return (diff / norm.clamp(min=1e-12)).mean()


def target_mask(labels: torch.Tensor) -> torch.Tensor:
    return labels != IGNORE
