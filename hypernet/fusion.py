"""Instruction fusion (fusion-in-decoder, as in HINT and TAGI), and its decoder-only analogue.

T5: the decoder cross-attends to [instruction token states ; encoded input], so the instruction
reaches the output through attention as well as through the generated adapter. In the TAGI
ablations, removing fusion costs the most of any component. An exported PEFT adapter cannot
carry it, which is why every entry point can switch it off per call. T5's cross-attention
has no position bias, so padding between the two parts is harmless once masked.

A decoder-only base has no cross-attention: there, fusion is a prefix. The instruction's key and
value states of every layer (`PrefixKV`) are computed once, when its adapter is made, by the
frozen base with no adapter, and each input attends to them as if the instruction preceded it
(its positions continue after the instruction's). That is instruction concatenation without
re-reading the instruction for every input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PrefixKV:
    """A decoder's key/value states of a batch of instructions, one (n, kv_heads, s, head_dim)
    pair per layer, right-padded like the InstructionEncoding that carries them."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    def select(self, index: torch.Tensor) -> PrefixKV:
        return PrefixKV(tuple(k[index] for k in self.keys), tuple(v[index] for v in self.values))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass(frozen=True)
class InstructionEncoding:
    """An instruction encoder's view of a batch of instructions (or, projected to the base width,
    what fusion attends to)."""

    states: torch.Tensor  # (n, s, d) token states: the generator's attention and fusion read them
    mask: torch.Tensor  # (n, s) 1 for tokens, 0 for padding
    pooled: torch.Tensor  # (n, d) masked mean over tokens, the generator's pooled input
    prefix: PrefixKV | None = None
    """A decoder-only base's fusion: the instructions' key/value states (hypernet.causal)."""

    def select(self, rows: torch.Tensor | list[int]) -> InstructionEncoding:
        index = torch.as_tensor(rows, dtype=torch.long, device=self.states.device)
        prefix = self.prefix.select(index) if self.prefix is not None else None
        return InstructionEncoding(self.states[index], self.mask[index], self.pooled[index], prefix)

    @property
    def nbytes(self) -> int:
        tensors = (self.states, self.mask, self.pooled)
        return sum(t.numel() * t.element_size() for t in tensors) + (self.prefix.nbytes if self.prefix is not None else 0)


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
    return InstructionEncoding(states, mask, pooled, _concat_prefixes(rows, length))


def _concat_prefixes(rows: list[InstructionEncoding | None], length: int) -> PrefixKV | None:
    """The rows' prefixes in one right-padded batch (zeros where a row has none: its mask hides them)."""
    present = [r.prefix for r in rows if r is not None and r.prefix is not None]
    if not present:
        return None
    if any(r is not None and r.prefix is None for r in rows):
        raise ValueError("cannot batch instruction encodings with and without a decoder prefix")

    def pad(per_row: list[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
        out = like.new_zeros(len(rows), like.shape[1], length, like.shape[3])
        for i, t in enumerate(per_row):
            if t is not None:
                out[i, :, : t.shape[2]] = t[0]
        return out

    layers = range(len(present[0].keys))
    keys = tuple(pad([r.prefix.keys[n] if r is not None else None for r in rows], present[0].keys[n]) for n in layers)
    values = tuple(pad([r.prefix.values[n] if r is not None else None for r in rows], present[0].values[n]) for n in layers)
    return PrefixKV(keys, values)
