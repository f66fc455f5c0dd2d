"""The adapter generator (hypernet/generator.py): its layout, its initialisation and its wiring.

A generator is built here straight from a hand-written layout, without a base model, so each
property is checked on the generator alone.
"""

from __future__ import annotations

import math

import torch

from hypernet.config import GeneratorConfig
from hypernet.fusion import InstructionEncoding, masked_mean
from hypernet.generator import AdapterGenerator
from hypernet.targets import TargetLayout, TargetModule

D_MODEL = 32


def t5_layout(num_layers: int = 2) -> TargetLayout:
    """q and v of every attention block plus wi and wo, with the shapes T5 gives them (d_ff 48)."""
    targets = []
    for stack in ("encoder", "decoder"):
        for layer in range(num_layers):
            blocks = [("self", "SelfAttention", 0)] + ([("cross", "EncDecAttention", 1)] if stack == "decoder" else [])
            for block, module, index in blocks:
                for name in ("q", "v"):
                    path = f"{stack}.block.{layer}.layer.{index}.{module}.{name}"
                    targets.append(TargetModule(stack, layer, block, name, path, D_MODEL, D_MODEL))
            ffn = f"{stack}.block.{layer}.layer.{len(blocks)}.DenseReluDense"
            targets.append(TargetModule(stack, layer, "ffn", "wi", f"{ffn}.wi", D_MODEL, 48))
            targets.append(TargetModule(stack, layer, "ffn", "wo", f"{ffn}.wo", 48, D_MODEL))
    return TargetLayout(tuple(targets))


def make_generator(seed: int = 0, width: int | None = None, project_fusion: bool = False, **config) -> AdapterGenerator:
    """Pooled-only (attention_heads 0) unless a test asks for attention: most properties below
    are about the pooled path and the heads; the attention path has its own tests."""
    torch.manual_seed(seed)
    config = {"rank": 4, "alpha": 8.0, "target_modules": ("q", "v", "wi", "wo"), "attention_heads": 0, **config}
    return AdapterGenerator(t5_layout(), D_MODEL, GeneratorConfig(**config), width, project_fusion)


def encoding_of(states: torch.Tensor, mask: torch.Tensor | None = None) -> InstructionEncoding:
    mask = torch.ones(states.shape[:2], dtype=torch.long) if mask is None else mask
    return InstructionEncoding(states, mask, masked_mean(states, mask))


def pooled(n: int, seed: int = 1, tokens: int = 5, width: int = D_MODEL) -> InstructionEncoding:
    """n encoded instructions of `tokens` random token states each."""
    return encoding_of(torch.randn(n, tokens, width, generator=torch.Generator().manual_seed(seed)))


def train_b_heads(generator: AdapterGenerator) -> None:
    """Stand in for training: give the (zero-initialised) B heads non-zero weights."""
    with torch.no_grad():
        for head in generator.heads_B.values():
            head.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(7))
            head.bias.normal_(0, 0.1, generator=torch.Generator().manual_seed(8))


def test_factors_have_the_peft_layout_per_group_and_the_config_scale():
    generator = make_generator()
    lora = generator(pooled(3))
    layout = generator.layout
    assert list(lora.lora_A) == list(layout.groups) == ["32x32", "32x48", "48x32"]
    for group, (d_in, d_out, count) in layout.groups.items():
        assert lora.lora_A[group].shape == (count, 3, 4, d_in)  # (targets, batch, r, in)
        assert lora.lora_B[group].shape == (count, 3, d_out, 4)  # (targets, batch, out, r)
        assert lora.lora_A[group][0].is_contiguous()  # one target's (batch, r, in) block feeds bmm as is
    assert lora.scale == 2.0  # alpha / r


def test_the_first_update_is_exactly_zero_and_a_follows_peft_init_scale():
    generator = make_generator()
    lora = generator(pooled(4))
    assert all(torch.equal(b, torch.zeros_like(b)) for b in lora.lora_B.values())
    hidden = D_MODEL // 2
    for group, (d_in, _, _) in generator.layout.groups.items():
        bound = 1.0 / math.sqrt(d_in)
        head = generator.heads_A[group]
        # uniform(-bound, bound) bias and uniform(+-bound / sqrt(hidden)) weights: inside the bounds, spread over them
        assert head.bias.abs().max() <= bound and head.bias.abs().max() > 0.9 * bound
        assert head.bias.min() < 0 < head.bias.max()
        w = bound / math.sqrt(hidden)
        assert head.weight.abs().max() <= w and head.weight.abs().max() > 0.9 * w
        assert head.weight.min() < 0 < head.weight.max()
        assert lora.lora_A[group].abs().max() < 3 * bound  # A stays near PEFT's scale
        assert lora.lora_A[group].std() > 0.2 * bound


def test_hidden_width_defaults_to_half_of_d_model():
    assert make_generator().instruction_proj[1].out_features == D_MODEL // 2
    assert make_generator(hidden_dim=24).instruction_proj[1].out_features == 24


def test_every_target_gets_its_own_factors_and_every_instruction_its_own_adapter():
    generator = make_generator()
    train_b_heads(generator)
    lora = generator(pooled(2))
    for group in lora.lora_A:
        for factors in (lora.lora_A[group], lora.lora_B[group]):
            rows = factors[:, 0].flatten(1)  # one row per target of the group, instruction 0
            distance = torch.cdist(rows, rows) + torch.eye(len(rows)) * 1e9
            # stack, layer, block and module name each tell targets apart (e.g. encoder vs decoder
            # layer 0, or a decoder layer's self vs cross q)
            assert distance.min() > 1e-3, group
            assert not torch.allclose(factors[:, 0], factors[:, 1], atol=1e-3)  # two instructions, two adapters


def test_factors_are_the_heads_applied_to_each_target_and_instruction():
    """Reference written per target: which head row lands in which slot, and in which (r, in) order."""
    generator = make_generator(embed_dim=8)
    train_b_heads(generator)
    x = pooled(2)
    lora = generator(x)
    layout = generator.layout
    stack_ids, block_ids = {"encoder": 0, "decoder": 1}, {"self": 0, "cross": 1, "ffn": 2}
    max_layer = max(t.layer for t in layout.targets) + 1
    names = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")
    with torch.no_grad():
        for target, group, index in layout.slots():
            embedding = (
                generator.position_embedding.weight[stack_ids[target.stack] * max_layer + target.layer]
                + generator.module_embedding.weight[names.index(target.name)]
                + generator.block_embedding.weight[block_ids[target.block]]
            )
            for i in range(2):
                h = generator.trunk(generator.instruction_proj(x.pooled[i]) + generator.target_proj(embedding))
                A = generator.heads_A[group](h).view(4, target.in_features)
                B = generator.heads_B[group](h).view(target.out_features, 4)
                assert torch.allclose(lora.lora_A[group][index, i], A, atol=1e-5), (target.path, i)
                assert torch.allclose(lora.lora_B[group][index, i], B, atol=1e-5), (target.path, i)


def test_parameters_and_their_shapes_are_the_checkpoint_format():
    """Checkpoints store the generator's state dict: its keys and shapes are a file format, and
    the target index buffers are derived from the layout, not stored."""
    generator = make_generator()
    shapes = {k: tuple(v.shape) for k, v in generator.state_dict().items()}
    assert shapes == {
        "position_embedding.weight": (4, 64),  # 2 stacks x 2 layers
        "module_embedding.weight": (8, 64),  # every known module name
        "block_embedding.weight": (3, 64),
        "instruction_proj.0.weight": (32,),
        "instruction_proj.0.bias": (32,),
        "instruction_proj.1.weight": (16, 32),
        "instruction_proj.1.bias": (16,),
        "target_proj.weight": (16, 64),
        "target_proj.bias": (16,),
        "trunk.1.weight": (16, 16),
        "trunk.1.bias": (16,),
        "trunk.3.weight": (16,),
        "trunk.3.bias": (16,),
        "heads_A.32x32.weight": (4 * 32, 16),
        "heads_A.32x32.bias": (4 * 32,),
        "heads_A.32x48.weight": (4 * 32, 16),
        "heads_A.32x48.bias": (4 * 32,),
        "heads_A.48x32.weight": (4 * 48, 16),
        "heads_A.48x32.bias": (4 * 48,),
        "heads_B.32x32.weight": (32 * 4, 16),
        "heads_B.32x32.bias": (32 * 4,),
        "heads_B.32x48.weight": (48 * 4, 16),
        "heads_B.32x48.bias": (48 * 4,),
        "heads_B.48x32.weight": (32 * 4, 16),
        "heads_B.48x32.bias": (32 * 4,),
    }


def test_gradients_reach_every_part_of_the_generator():
    generator = make_generator()
    train_b_heads(generator)
    lora = generator(pooled(2))
    loss = sum((b @ a).square().sum() for a, b in zip(lora.lora_A.values(), lora.lora_B.values(), strict=True))
    loss.backward()
    missing = [name for name, p in generator.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_each_adapter_depends_only_on_its_own_instruction():
    generator = make_generator()
    train_b_heads(generator)
    x = pooled(3)
    batch = generator(x)
    for i in range(3):
        alone = generator(x.select([i]))
        for group in batch.lora_A:
            assert torch.allclose(batch.lora_A[group][:, i], alone.lora_A[group][:, 0], atol=1e-6)
            assert torch.allclose(batch.lora_B[group][:, i], alone.lora_B[group][:, 0], atol=1e-6)


# ---- attention over the instruction's token states ----------------------------------------------


def test_attention_reads_the_words_that_the_mean_averages_away():
    """Two instructions with the same mean state but different tokens ("smallest" vs "largest" in
    the same frame pool to nearly the same vector): a pooled-only generator cannot tell them
    apart; the attention path must."""
    states = torch.randn(1, 6, D_MODEL, generator=torch.Generator().manual_seed(3))
    shift = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(4))
    other = states.clone()
    other[0, 1] += shift
    other[0, 2] -= shift  # same mean, different tokens
    first, second = encoding_of(states), encoding_of(other)
    assert torch.allclose(first.pooled, second.pooled, atol=1e-6)
    for heads, differs in ((0, False), (4, True)):
        generator = make_generator(attention_heads=heads)
        train_b_heads(generator)
        a, b = generator(first), generator(second)
        gap = max((a.lora_B[g] - b.lora_B[g]).abs().max().item() for g in a.lora_B)
        assert (gap > 1e-4) is differs, (heads, gap)


def test_attention_ignores_padding_and_keeps_instructions_apart():
    generator = make_generator(attention_heads=4)
    train_b_heads(generator)
    short = pooled(1, seed=5, tokens=3)
    padded_states = torch.cat([short.states, torch.randn(1, 4, D_MODEL)], dim=1)
    padded = encoding_of(padded_states, torch.tensor([[1, 1, 1, 0, 0, 0, 0]]))
    other = pooled(1, seed=6, tokens=7)
    both = InstructionEncoding(
        torch.cat([padded.states, other.states]), torch.cat([padded.mask, other.mask]), torch.cat([padded.pooled, other.pooled])
    )
    alone, batch = generator(short), generator(both)
    for group in alone.lora_A:
        assert torch.allclose(batch.lora_A[group][:, 0], alone.lora_A[group][:, 0], atol=1e-5)
        assert torch.allclose(batch.lora_B[group][:, 0], alone.lora_B[group][:, 0], atol=1e-5)
        assert not torch.allclose(batch.lora_B[group][:, 1], alone.lora_B[group][:, 0], atol=1e-3)


def test_gradients_reach_the_attention_and_fusion_projection_of_an_external_encoder():
    generator = make_generator(attention_heads=4, width=24, project_fusion=True)
    train_b_heads(generator)
    encoding = pooled(2, width=24)
    lora = generator(encoding)
    fused = generator.fusion_states(encoding)
    assert fused.states.shape == (2, 5, D_MODEL) and torch.equal(fused.mask, encoding.mask)
    loss = sum((b @ a).square().sum() for a, b in zip(lora.lora_A.values(), lora.lora_B.values(), strict=True))
    (loss + fused.states.square().sum()).backward()
    missing = [name for name, p in generator.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    assert {"query.weight", "key_value.weight", "attention_out.weight", "fusion_projection.1.weight"} <= set(
        dict(generator.named_parameters())
    )


def test_the_base_encoder_needs_no_fusion_projection():
    generator = make_generator(attention_heads=4)
    encoding = pooled(2)
    assert generator.fusion_projection is None
    assert generator.fusion_states(encoding) is encoding
