"""Which Linear layers of a T5 model receive LoRA, and how their factors are laid out.

A target is named by (stack, layer, block, module): e.g. ("decoder", 3, "cross", "v") is
`decoder.block.3.layer.1.EncDecAttention.v`. Targets with the same (in, out) shape form a
group; the factors of a group are stored as one tensor, so that a batch of adapters is a
handful of tensors rather than hundreds, and batching adapters costs a few `cat` calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from hypernet.errors import UserError

Stack = Literal["encoder", "decoder"]
Block = Literal["self", "cross", "ffn"]

_BLOCKS: dict[str, Block] = {"SelfAttention": "self", "EncDecAttention": "cross", "DenseReluDense": "ffn"}
_PATH = re.compile(r"^(encoder|decoder)\.block\.(\d+)\.layer\.\d+\.(SelfAttention|EncDecAttention|DenseReluDense)\.(\w+)$")


@dataclass(frozen=True)
class TargetModule:
    stack: Stack
    layer: int
    block: Block
    name: str
    path: str
    in_features: int
    out_features: int

    @property
    def group(self) -> str:
        return f"{self.in_features}x{self.out_features}"


@dataclass(frozen=True)
class TargetLayout:
    """All targets of a model in a fixed order, and each one's slot in its group tensor."""

    targets: tuple[TargetModule, ...]

    @property
    def groups(self) -> dict[str, tuple[int, int, int]]:
        """group -> (in_features, out_features, number of targets), in first-seen order."""
        out: dict[str, tuple[int, int, int]] = {}
        for t in self.targets:
            _, _, n = out.get(t.group, (0, 0, 0))
            out[t.group] = (t.in_features, t.out_features, n + 1)
        return out

    def slots(self) -> list[tuple[TargetModule, str, int]]:
        """(target, group, index within the group) for every target."""
        counts: dict[str, int] = {}
        result = []
        for t in self.targets:
            index = counts.get(t.group, 0)
            counts[t.group] = index + 1
            result.append((t, t.group, index))
        return result


def find_targets(model: nn.Module, module_names: tuple[str, ...]) -> TargetLayout:
    """Every Linear of a (not yet injected) T5 encoder-decoder whose last name is in `module_names`."""
    wanted = set(module_names)
    targets = []
    for path, module in model.named_modules():
        match = _PATH.match(path)
        if match is None or match.group(4) not in wanted or not isinstance(module, nn.Linear):
            continue
        stack, layer, block, name = match.groups()
        targets.append(TargetModule(stack, int(layer), _BLOCKS[block], name, path, module.in_features, module.out_features))
    if not targets:
        raise UserError(f"no T5 modules named {sorted(wanted)} found: is this a T5 encoder-decoder?")
    missing = wanted - {t.name for t in targets}
    if missing:
        raise UserError(f"target modules {sorted(missing)} do not exist in this model")
    return TargetLayout(tuple(targets))


@dataclass(frozen=True)
class LoraWeights:
    """A batch of adapters: lora_A[g] is (n_targets_g, batch, r, in), lora_B[g] (n_targets_g, batch, out, r).

    One adapter is a batch of one. Row i of every tensor belongs to example i of the batch it
    is attached to; an all-zero row is "no adapter".
    """

    lora_A: dict[str, torch.Tensor]
    lora_B: dict[str, torch.Tensor]
    scale: float

    @property
    def batch_size(self) -> int:
        return next(iter(self.lora_A.values())).shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.lora_A, self.lora_B) for t in d.values())

    def select(self, rows: torch.Tensor | list[int]) -> LoraWeights:
        """Row i of the result is row rows[i] of self: maps examples to the adapter of their task."""
        device = next(iter(self.lora_A.values())).device
        index = torch.as_tensor(rows, dtype=torch.long, device=device)
        return LoraWeights(
            {g: a.index_select(1, index) for g, a in self.lora_A.items()},
            {g: b.index_select(1, index) for g, b in self.lora_B.items()},
            self.scale,
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LoraWeights:
        return LoraWeights(
            {g: a.to(device=device, dtype=dtype) for g, a in self.lora_A.items()},
            {g: b.to(device=device, dtype=dtype) for g, b in self.lora_B.items()},
            self.scale,
        )
