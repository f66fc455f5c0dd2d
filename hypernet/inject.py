"""Attaching per-example LoRA factors to a frozen T5 without copying or changing its weights.

`inject_lora` swaps each target Linear for a `LoraLinear` that holds the original layer.
Factors are attached for the duration of a `with slots.attached(weights):` block and are
always detached on exit, so an exception can never leave an adapter active in a shared model.
Making a new adapter usable is therefore only pointing slots at tensors: nothing is copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from hypernet.lora import add_lora
from hypernet.targets import LoraWeights, TargetLayout


class LoraLinear(nn.Module):
    """A frozen Linear plus, when attached, a per-example low-rank update.

    It takes over the Linear's own `weight` and `bias` parameters, so state-dict keys do not
    change: an injected model still saves with `save_pretrained` and loads its checkpoints.
    T5's feed-forward reads `self.wo.weight.dtype`, another reason to look like a Linear.
    """

    def __init__(self, base: nn.Linear, group: str, index: int) -> None:
        super().__init__()
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.group = group
        self.index = index
        self.factors: tuple[torch.Tensor, torch.Tensor, float] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.factors is None:
            return y
        lora_A, lora_B, scale = self.factors
        return add_lora(y, x, lora_A, lora_B, scale)


class LoraSlots:
    """The injected layers of one model, in layout order."""

    def __init__(self, layers: list[LoraLinear]) -> None:
        self.layers = layers

    @contextmanager
    def attached(self, weights: LoraWeights | None) -> Iterator[None]:
        if weights is None:
            yield
            return
        like = self.layers[0].weight
        if next(iter(weights.lora_A.values())).dtype != like.dtype:
            weights = weights.to(device=like.device, dtype=like.dtype)  # e.g. a bf16 base on CUDA
        try:
            for layer in self.layers:
                layer.factors = (
                    weights.lora_A[layer.group][layer.index],
                    weights.lora_B[layer.group][layer.index],
                    weights.scale,
                )
            yield
        finally:
            for layer in self.layers:
                layer.factors = None


def inject_lora(model: nn.Module, layout: TargetLayout) -> LoraSlots:
    """Replace every target of `layout` in `model` by a LoraLinear (idempotent)."""
    layers = []
    for target, group, index in layout.slots():
        parent_path, _, child = target.path.rpartition(".")
        parent = model.get_submodule(parent_path)
        current = getattr(parent, child)
        if isinstance(current, LoraLinear):
            layers.append(current)
            continue
        wrapper = LoraLinear(current, group, index)
        setattr(parent, child, wrapper)
        layers.append(wrapper)
    return LoraSlots(layers)
