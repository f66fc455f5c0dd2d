"""Per-example LoRA arithmetic: example i of a batch runs with its own factors A_i, B_i.

    y_i = x_i W^T + scale * (x_i A_i^T) B_i^T

Shapes follow PEFT (`lora_A.weight` is (r, in), `lora_B.weight` is (out, r)) with a leading
batch dimension, so a PEFT adapter and a generated one are the same numbers in the same layout.
A row whose factors are zero gets exactly the base output, which is how a batch mixes adapted
and plain requests. Two bmm calls cost a few percent of the frozen matmul at rank 8; PEFT's
mixed batch instead loops over adapter groups, which does not scale to one adapter per request.
"""

from __future__ import annotations

import torch


def lora_delta(x: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * B_i A_i x_i for every example. x: (b, t, in), lora_A: (b, r, in), lora_B: (b, out, r)."""
    return torch.bmm(torch.bmm(x, lora_A.mT), lora_B.mT) * scale


def add_lora(y: torch.Tensor, x: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
    """y + lora_delta(x, ...), fused into one baddbmm; in place when no gradient is recorded,
    since at inference the extra (b, t, out) allocation is most of what LoRA costs."""
    xa = torch.bmm(x, lora_A.mT)  # (b, t, r)
    if torch.is_grad_enabled() and (y.requires_grad or xa.requires_grad):
        return torch.baddbmm(y, xa, lora_B.mT, alpha=scale)
    return y.baddbmm_(xa, lora_B.mT, alpha=scale)


def delta_weight(lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
    """The dense update scale * B @ A, (..., out, in). Comparing adapters here is invariant to
    the factor ambiguity (B M, M^-1 A) that makes a factor-wise comparison meaningless."""
    return scale * (lora_B @ lora_A)
