"""The hypernetwork: pooled instruction -> LoRA factors for every target module, in one pass.

Each target is told apart by learned embeddings of its (stack, layer), its module name
(q, k, v, o, wi, wo, ...) and its block kind (self-attention, cross-attention, feed-forward).
The pooled instruction and the target embedding meet in a shared MLP trunk of width
`hidden_dim` (a real fraction of d_model: the authors' 8-wide trunk confined every generated A
to an 8-dimensional subspace), then one head per (in, out) shape emits A (r x in) and B (out x r).
The B head starts at zero, so the first generated update is exactly zero and training starts
from the frozen base, as LoRA does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hypernet.config import KNOWN_TARGETS, GeneratorConfig
from hypernet.targets import LoraWeights, TargetLayout

_BLOCK_IDS = {"self": 0, "cross": 1, "ffn": 2}
_STACK_IDS = {"encoder": 0, "decoder": 1}


class AdapterGenerator(nn.Module):
    def __init__(self, layout: TargetLayout, d_model: int, config: GeneratorConfig) -> None:
        super().__init__()
        self.layout = layout
        self.config = config
        hidden = config.hidden_dim or d_model // 2
        max_layer = max(t.layer for t in layout.targets) + 1

        self.position_embedding = nn.Embedding(len(_STACK_IDS) * max_layer, config.embed_dim)
        self.module_embedding = nn.Embedding(len(KNOWN_TARGETS), config.embed_dim)
        self.block_embedding = nn.Embedding(len(_BLOCK_IDS), config.embed_dim)
        self.register_buffer(
            "position_ids", torch.tensor([_STACK_IDS[t.stack] * max_layer + t.layer for t in layout.targets]), persistent=False
        )
        self.register_buffer("module_ids", torch.tensor([KNOWN_TARGETS.index(t.name) for t in layout.targets]), persistent=False)
        self.register_buffer("block_ids", torch.tensor([_BLOCK_IDS[t.block] for t in layout.targets]), persistent=False)

        self.instruction_proj = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, hidden))
        self.target_proj = nn.Linear(config.embed_dim, hidden)
        self.trunk = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))

        r = config.rank
        self.heads_A = nn.ModuleDict()
        self.heads_B = nn.ModuleDict()
        for group, (d_in, d_out, _) in layout.groups.items():
            self.register_buffer(
                f"rows_{group}", torch.tensor([i for i, t in enumerate(layout.targets) if t.group == group]), persistent=False
            )
            head_A = nn.Linear(hidden, r * d_in)
            # A ~ PEFT's kaiming-uniform scale (1/sqrt(in)) whatever the hidden width, so the
            # update's magnitude does not grow with the generator's size.
            bound = 1.0 / math.sqrt(d_in)
            nn.init.uniform_(head_A.weight, -bound / math.sqrt(hidden), bound / math.sqrt(hidden))
            nn.init.uniform_(head_A.bias, -bound, bound)
            head_B = nn.Linear(hidden, d_out * r)
            nn.init.zeros_(head_B.weight)
            nn.init.zeros_(head_B.bias)
            self.heads_A[group] = head_A
            self.heads_B[group] = head_B

    def forward(self, pooled: torch.Tensor) -> LoraWeights:
        """pooled: (n, d_model) -> LoraWeights for a batch of n adapters."""
        n = pooled.shape[0]
        r = self.config.rank
        targets = (
            self.position_embedding(self.position_ids)
            + self.module_embedding(self.module_ids)
            + self.block_embedding(self.block_ids)
        )
        h = self.instruction_proj(pooled)[:, None, :] + self.target_proj(targets)[None]  # (n, T, H)
        h = self.trunk(h)
        lora_A, lora_B = {}, {}
        for group, (d_in, d_out, count) in self.layout.groups.items():
            hg = h[:, getattr(self, f"rows_{group}")]  # (n, T_g, H)
            # (n, T_g, r*in) -> (T_g, n, r, in): the target index leads so that each layer's
            # slice lora_A[g][i] is one contiguous (n, r, in) block for bmm.
            lora_A[group] = self.heads_A[group](hg).view(n, count, r, d_in).transpose(0, 1).contiguous()
            lora_B[group] = self.heads_B[group](hg).view(n, count, d_out, r).transpose(0, 1).contiguous()
        return LoraWeights(lora_A, lora_B, self.config.scale)
