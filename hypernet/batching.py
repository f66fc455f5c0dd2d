"""Laying per-request adapters out as one batch, without allocating on every step.

A batch needs, for every target layer, one (b, r, in) tensor of A rows and one (b, out, r) of B
rows. Building that with `torch.cat` allocates the whole batch anew each step (for t5-base with
q, k, v, o, wi, wo at rank 8, ~13 MB per adapter), and fresh large allocations page-fault:
hundreds of ms on a busy CPU. `AdapterBatcher` keeps one workspace and copies an adapter into a
row only when that row's adapter changed, so a steady stream of requests for cached adapters
costs no copies at all, and swapping in a new adapter is one row copy.
"""

from __future__ import annotations

import torch

from hypernet.targets import LoraWeights, TargetLayout


class AdapterBatcher:
    def __init__(self, layout: TargetLayout, rank: int, scale: float, dtype: torch.dtype, device: torch.device) -> None:
        self.layout = layout
        self.rank = rank
        self.scale = scale
        self.dtype = dtype
        self.device = device
        self.capacity = 0
        self.lora_A: dict[str, torch.Tensor] = {}
        self.lora_B: dict[str, torch.Tensor] = {}
        self.rows: list[LoraWeights | None] = []  # what each row holds now (None: zeros)

    def grow(self, capacity: int) -> None:
        r = self.rank
        lora_A, lora_B = {}, {}
        for group, (d_in, d_out, count) in self.layout.groups.items():
            lora_A[group] = torch.zeros(count, capacity, r, d_in, dtype=self.dtype, device=self.device)
            lora_B[group] = torch.zeros(count, capacity, d_out, r, dtype=self.dtype, device=self.device)
            if self.capacity:  # keep rows already laid out
                lora_A[group][:, : self.capacity] = self.lora_A[group]
                lora_B[group][:, : self.capacity] = self.lora_B[group]
        self.lora_A, self.lora_B = lora_A, lora_B
        self.rows += [None] * (capacity - self.capacity)
        self.capacity = capacity

    def assemble(self, adapters: list[LoraWeights | None]) -> LoraWeights:
        """Row i runs with adapters[i] (each a batch of one); None rows run the plain base.

        The result is a view of the workspace: valid until the next `assemble` call."""
        if len(adapters) > self.capacity:
            self.grow(max(len(adapters), 2 * self.capacity))
        for i, adapter in enumerate(adapters):
            if self.rows[i] is adapter:
                continue
            if adapter is not None and adapter.scale != self.scale:
                raise ValueError("adapters with different alpha/r cannot share a batch")
            for group in self.lora_A:
                if adapter is None:
                    self.lora_A[group][:, i].zero_()
                    self.lora_B[group][:, i].zero_()
                else:
                    self.lora_A[group][:, i].copy_(adapter.lora_A[group][:, 0])
                    self.lora_B[group][:, i].copy_(adapter.lora_B[group][:, 0])
            self.rows[i] = adapter
        b = len(adapters)
        return LoraWeights(
            {g: a[:, :b] for g, a in self.lora_A.items()}, {g: t[:, :b] for g, t in self.lora_B.items()}, self.scale
        )


def stack_adapters(adapters: list[LoraWeights | None]) -> LoraWeights:
    """Row i runs with adapters[i] (each a batch of one; None: zeros, the plain base). Allocates
    a fresh batch: right for one-off calls; a server keeps an AdapterBatcher instead."""
    present = [a for a in adapters if a is not None]
    if not present:
        raise ValueError("stack_adapters needs at least one adapter")
    scale = present[0].scale
    if any(a.scale != scale for a in present):
        raise ValueError("adapters with different alpha/r cannot share a batch")

    def rows(factors: str, group: str) -> torch.Tensor:
        like = getattr(present[0], factors)[group]
        return torch.cat([getattr(a, factors)[group] if a is not None else torch.zeros_like(like) for a in adapters], dim=1)

    groups = present[0].lora_A
    return LoraWeights({g: rows("lora_A", g) for g in groups}, {g: rows("lora_B", g) for g in groups}, scale)
