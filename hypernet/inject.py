"""Attaching per-example LoRA factors to a frozen base without copying or changing its weights.

`inject_lora` swaps each target Linear for a `LoraLinear` that holds the original layer.
Factors are attached for the duration of a `with slots.attached(weights):` block and are
always detached on exit, so an exception can never leave an adapter active in a shared model.
Making a new adapter usable is therefore only pointing slots at tensors: nothing is copied.
A caller that attaches the same factors many times (a decode loop, around every step) prepares
them once (`slots.prepare`): the per-layer views are then built once, and attaching only sets
references.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from hypernet.lora import add_lora
from hypernet.targets import LoraWeights, TargetLayout, TargetModule

Factors = tuple[torch.Tensor, torch.Tensor, float]
"""One layer's (lora_A (b, r, in), lora_B (b, out, r), scale)."""


class LoraLinear(nn.Module):
    """A frozen Linear plus, when attached, a per-example low-rank update.

    It takes over the Linear's own `weight` and `bias` parameters, so state-dict keys do not
    change: an injected model still saves with `save_pretrained` and loads its checkpoints.
    T5's feed-forward reads `self.wo.weight.dtype`, another reason to look like a Linear.
    GPT-2's Conv1D keeps its weight as (in, out) (`fan_in_fan_out`); the factors are laid out as
    for a Linear either way, as PEFT lays them out.
    """

    def __init__(self, base: nn.Module, target: TargetModule, group: str, index: int) -> None:
        super().__init__()
        self.in_features = target.in_features
        self.out_features = target.out_features
        self.fan_in_fan_out = not isinstance(base, nn.Linear)
        self.weight = base.weight
        self.bias = base.bias
        self.group = group
        self.index = index
        self.factors: Factors | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight.T if self.fan_in_fan_out else self.weight, self.bias)
        if self.factors is None:
            return y
        lora_A, lora_B, scale = self.factors
        return add_lora(y, x, lora_A, lora_B, scale)


def _set_factors(layer: LoraLinear, factors: Factors | None) -> None:
    # nn.Module.__setattr__ first looks for a parameter, buffer or submodule of that name, about
    # a microsecond per call, paid for every layer twice per decode step; a tuple is none of
    # those, so the Module path would end in this same plain assignment.
    object.__setattr__(layer, "factors", factors)


@dataclass(frozen=True)
class Attachment:
    """A LoraWeights laid out per injected layer, in the model's dtype and device.

    Slicing the group tensors into per-layer views costs microseconds per layer, hundreds per
    attach on a real model; a decode loop that attaches around every step pays that once here."""

    weights: LoraWeights
    """The factors in the model's dtype and device (select rows from these, then prepare again)."""
    layers: tuple[tuple[LoraLinear, Factors], ...]
    """Each injected layer with the factors it runs with."""


class LoraSlots:
    """The injected layers of one model, in layout order."""

    def __init__(self, layers: list[LoraLinear]) -> None:
        self.layers = layers

    def prepare(self, weights: LoraWeights | None) -> Attachment | None:
        """`weights` ready to attach by reference; None (no adapter) stays None."""
        if weights is None:
            return None
        like = self.layers[0].weight
        weights = weights.to(device=like.device, dtype=like.dtype)  # e.g. a bf16 base on CUDA; a no-op when equal
        return Attachment(
            weights,
            tuple(
                (layer, (weights.lora_A[layer.group][layer.index], weights.lora_B[layer.group][layer.index], weights.scale))
                for layer in self.layers
            ),
        )

    @contextmanager
    def attached(self, weights: LoraWeights | Attachment | None) -> Iterator[None]:
        """Run the block with `weights` attached (prepared here unless already an Attachment)."""
        attachment = weights if weights is None or isinstance(weights, Attachment) else self.prepare(weights)
        if attachment is None:
            yield
            return
        try:
            for layer, factors in attachment.layers:
                _set_factors(layer, factors)
            yield
        finally:
            for layer, _ in attachment.layers:
                _set_factors(layer, None)

    def checkpoint_contexts(self) -> tuple[AbstractContextManager, AbstractContextManager]:
        """torch.utils.checkpoint's context_fn: nothing around a checkpointed layer's forward, and
        around its recomputation, which runs in the backward pass after `attached` has exited, the
        factors that were attached when it first ran."""
        return nullcontext(), self._restored(tuple((layer, layer.factors) for layer in self.layers))

    @contextmanager
    def _restored(self, factors: tuple[tuple[LoraLinear, Factors | None], ...]) -> Iterator[None]:
        before = [(layer, layer.factors) for layer in self.layers]
        try:
            for layer, saved in factors:
                _set_factors(layer, saved)
            yield
        finally:
            for layer, saved in before:
                _set_factors(layer, saved)


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
        wrapper = LoraLinear(current, target, group, index)
        setattr(parent, child, wrapper)
        layers.append(wrapper)
    return LoraSlots(layers)
