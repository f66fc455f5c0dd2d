"""Which Linear layers of a base model receive LoRA, and how their factors are laid out.

A target is named by (stack, layer, block, module): e.g. ("decoder", 3, "cross", "v") is T5's
`decoder.block.3.layer.1.EncDecAttention.v`; a decoder-only model has one stack, "decoder", and
("decoder", 3, "self", "q_proj") is Llama's `model.layers.3.self_attn.q_proj`. Targets with the same (in, out) shape form a
group; the factors of a group are stored as one tensor, so that a batch of adapters is a
handful of tensors rather than hundreds, and batching adapters costs a few `cat` calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hypernet.errors import UserError
from hypernet.families import T5_MODULES, Family, family_of

Stack = Literal["encoder", "decoder"]
Block = Literal["self", "cross", "ffn"]

_BLOCKS: dict[str, Block] = {
    "SelfAttention": "self",
    "EncDecAttention": "cross",
    "DenseReluDense": "ffn",
    "self_attn": "self",
    "attn": "self",
    "mlp": "ffn",
}
_T5_PATH = re.compile(r"^(encoder|decoder)\.block\.(\d+)\.layer\.\d+\.(SelfAttention|EncDecAttention|DenseReluDense)\.(\w+)$")
_DECODER_PATHS = {
    "model": re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)$"),  # Llama, Mistral, Qwen2, Qwen3
    "gpt2": re.compile(r"^transformer\.h\.(\d+)\.(attn|mlp)\.(\w+)$"),
}


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
    module_names: tuple[str, ...] = T5_MODULES
    """The family's targetable names (the generator embeds a target's name by its index here)."""

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


def _parse(path: str, family: Family) -> tuple[Stack, int, Block, str] | None:
    """(stack, layer, block, name) of a module path of `family`'s layout, or None."""
    if not family.causal:
        match = _T5_PATH.match(path)
        if match is None:
            return None
        stack, layer, block, name = match.groups()
        return stack, int(layer), _BLOCKS[block], name  # type: ignore[return-value]
    match = _DECODER_PATHS["gpt2" if family.fan_in_fan_out else "model"].match(path)
    if match is None:
        return None
    layer, block, name = match.groups()
    return "decoder", int(layer), _BLOCKS[block], name


def _shape(module: nn.Module, family: Family) -> tuple[int, int] | None:
    """(in_features, out_features) of a layer LoRA can wrap, or None. GPT-2's Conv1D stores its
    weight as (in, out)."""
    if isinstance(module, nn.Linear) and not family.fan_in_fan_out:
        return module.in_features, module.out_features
    if family.fan_in_fan_out and isinstance(module, Conv1D):
        d_in, d_out = module.weight.shape
        return d_in, d_out
    return None


def find_targets(model: nn.Module, module_names: tuple[str, ...]) -> TargetLayout:
    """Every layer of a (not yet injected) base model whose last name is in `module_names`, in the
    layout of the model's family."""
    family = family_of(model)
    wanted = set(module_names)
    foreign = sorted(wanted - set(family.module_names))
    if foreign:
        raise UserError(f"target modules {foreign} are not {family.name} module names; choose from {list(family.module_names)}")
    targets = []
    for path, module in model.named_modules():
        parsed, shape = _parse(path, family), _shape(module, family)
        if parsed is None or shape is None or parsed[3] not in wanted:
            continue
        targets.append(TargetModule(*parsed, path, *shape))
    missing = wanted - {t.name for t in targets}
    if missing:
        raise UserError(f"target modules {sorted(missing)} do not exist in this {family.name} model")
    return TargetLayout(tuple(targets), family.module_names)


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
