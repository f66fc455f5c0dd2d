"""Instruction fusion (fusion-in-decoder, as in HINT and TAGI).

The decoder cross-attends to [instruction token states ; encoded input], so the instruction
reaches the output through attention as well as through the generated adapter. In the TAGI
ablations, removing fusion costs the most of any component. An exported PEFT adapter cannot
carry it, which is why every entry point can switch it off per call. T5's cross-attention
has no position bias, so padding between the two parts is harmless once masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InstructionEncoding:
    """An instruction encoder's view of a batch of instructions (or, projected to the base width,
    what fusion attends to)."""

    states: torch.Tensor  # (n, s, d) token states: the generator's attention and fusion read them
    mask: torch.Tensor  # (n, s) 1 for tokens, 0 for padding
    pooled: torch.Tensor  # (n, d) masked mean over tokens, the generator's pooled input

    def select(self, rows: torch.Tensor | list[int]) -> InstructionEncoding:
        index = torch.as_tensor(rows, dtype=torch.long, device=self.states.device)
        return InstructionEncoding(self.states[index], self.mask[index], self.pooled[index])


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only (the authors' code averaged padding in)."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def fuse(encoded: torch.Tensor, mask: torch.Tensor, instruction: InstructionEncoding | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepend instruction states to the encoder output the decoder attends to."""
    if instruction is None:
        return encoded, mask
    states = instruction.states.to(encoded.dtype)
    return torch.cat([states, encoded], dim=1), torch.cat([instruction.mask.to(mask.dtype), mask], dim=1)


def concat_instructions(rows: list[InstructionEncoding | None]) -> InstructionEncoding | None:
    """Batch single-instruction encodings, padding to the longest; None rows attend to nothing."""
    present = [r for r in rows if r is not None]
    if not present:
        return None
    like = present[0]
    length = max(r.states.shape[1] for r in present)
    d = like.states.shape[-1]
    states = like.states.new_zeros(len(rows), length, d)
    mask = like.mask.new_zeros(len(rows), length)
    pooled = like.pooled.new_zeros(len(rows), like.pooled.shape[-1])
    for i, r in enumerate(rows):
        if r is None:
            continue
        s = r.states.shape[1]
        states[i, :s] = r.states[0]
        mask[i, :s] = r.mask[0]
        pooled[i] = r.pooled[0]
    return InstructionEncoding(states, mask, pooled)
