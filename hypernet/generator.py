"""The hypernetwork: an encoded instruction -> LoRA factors for every target module, in one pass.

Each target is told apart by learned embeddings of its (stack, layer), its module name
(q, k, v, o, wi, wo, ...) and its block kind (self-attention, cross-attention, feed-forward).
The instruction reaches each target twice: its pooled vector, and (with `attention_heads`) what
the target's own query reads from its token states, so that the few words telling two tasks apart
are not averaged away. Both meet the target embedding in a shared MLP trunk of width
`hidden_dim` (a real fraction of d_model: the authors' 8-wide trunk confined every generated A
to an 8-dimensional subspace), then one head per (in, out) shape emits A (r x in) and B (out x r).
The B head starts at zero, so the first generated update is exactly zero and training starts
from the frozen base, as LoRA does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hypernet.config import GeneratorConfig
from hypernet.fusion import InstructionEncoding, masked_mean
from hypernet.targets import LoraWeights, TargetLayout

_BLOCK_IDS = {"self": 0, "cross": 1, "ffn": 2}
_STACK_IDS = {"encoder": 0, "decoder": 1}


class AdapterGenerator(nn.Module):
    """`instruction_width` is the instruction encoder's width (d_model for the base's own encoder).
    With `project_fusion`, the generator also owns the trainable projection of the instruction's
    states into the base width that fusion attends to (an external encoder speaks another space)."""

    def __init__(
        self,
        layout: TargetLayout,
        d_model: int,
        config: GeneratorConfig,
        instruction_width: int | None = None,
        project_fusion: bool = False,
    ) -> None:
        super().__init__()
        width = instruction_width or d_model
        self.layout = layout
        self.config = config
        hidden = config.hidden_dim or d_model // 2
        max_layer = max(t.layer for t in layout.targets) + 1

        self.position_embedding = nn.Embedding(len(_STACK_IDS) * max_layer, config.embed_dim)
        self.module_embedding = nn.Embedding(len(layout.module_names), config.embed_dim)
        self.block_embedding = nn.Embedding(len(_BLOCK_IDS), config.embed_dim)
        self.register_buffer(
            "position_ids", torch.tensor([_STACK_IDS[t.stack] * max_layer + t.layer for t in layout.targets]), persistent=False
        )
        self.register_buffer(
            "module_ids", torch.tensor([layout.module_names.index(t.name) for t in layout.targets]), persistent=False
        )
        self.register_buffer("block_ids", torch.tensor([_BLOCK_IDS[t.block] for t in layout.targets]), persistent=False)

        self.instruction_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden))
        self.target_proj = nn.Linear(config.embed_dim, hidden)
        heads = config.attention_heads
        if heads:
            if hidden % heads:
                raise ValueError(f"hidden width {hidden} is not divisible by attention_heads={heads}")
            self.state_norm = nn.LayerNorm(width)
            self.query = nn.Linear(hidden, hidden)
            self.key_value = nn.Linear(width, 2 * hidden)
            self.attention_out = nn.Linear(hidden, hidden)
        self.fusion_projection = None
        if project_fusion:
            # Small at first: the frozen decoder has never attended to these states, and large
            # random ones would derail it before the projection has learned anything.
            self.fusion_projection = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d_model))
            nn.init.normal_(self.fusion_projection[1].weight, std=0.02)
            nn.init.zeros_(self.fusion_projection[1].bias)
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

    def attend(self, targets: torch.Tensor, encoding: InstructionEncoding) -> torch.Tensor:
        """(T, H) target features query the (n, s, width) token states -> (n, T, H)."""
        n, heads = encoding.states.shape[0], self.config.attention_heads
        hidden = targets.shape[-1]
        query = self.query(targets).view(1, -1, heads, hidden // heads).transpose(1, 2).expand(n, -1, -1, -1)
        key, value = self.key_value(self.state_norm(encoding.states)).chunk(2, dim=-1)
        key, value = (t.view(n, -1, heads, hidden // heads).transpose(1, 2) for t in (key, value))
        mask = encoding.mask.bool()[:, None, None, :]  # (n, 1, 1, s): padding is never read
        read = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return self.attention_out(read.transpose(1, 2).reshape(n, -1, hidden))

    def fusion_states(self, encoding: InstructionEncoding) -> InstructionEncoding:
        """What the decoder attends to with fusion: the states in the base width."""
        if self.fusion_projection is None:
            return encoding
        states = self.fusion_projection(encoding.states)
        return InstructionEncoding(states, encoding.mask, masked_mean(states, encoding.mask))

    def forward(self, encoding: InstructionEncoding) -> LoraWeights:
        """An encoded batch of n instructions -> LoraWeights for a batch of n adapters."""
        n = encoding.pooled.shape[0]
        r = self.config.rank
        targets = self.target_proj(
            self.position_embedding(self.position_ids)
            + self.module_embedding(self.module_ids)
            + self.block_embedding(self.block_ids)
        )  # (T, H)
        h = self.instruction_proj(encoding.pooled)[:, None, :] + targets[None]  # (n, T, H)
        if self.config.attention_heads:
            h = h + self.attend(targets, encoding)
        h = self.trunk(h)
        lora_A, lora_B = {}, {}
        for group, (d_in, d_out, count) in self.layout.groups.items():
            hg = h[:, getattr(self, f"rows_{group}")]  # (n, T_g, H)
            # (n, T_g, r*in) -> (T_g, n, r, in): the target index leads so that each layer's
            # slice lora_A[g][i] is one contiguous (n, r, in) block for bmm.
            lora_A[group] = self.heads_A[group](hg).view(n, count, r, d_in).transpose(0, 1).contiguous()
            lora_B[group] = self.heads_B[group](hg).view(n, count, d_out, r).transpose(0, 1).contiguous()
        return LoraWeights(lora_A, lora_B, self.config.scale)
