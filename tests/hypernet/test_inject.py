"""Attaching per-example factors to a frozen T5 (hypernet/inject.py), against merged dense weights.

The reference is independent of the code under test: a deep copy of the T5 whose target
weights are W + scale * B @ A for one adapter, run with transformers' own Linear layers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration

from hypernet.inject import inject_lora
from hypernet.targets import LoraWeights, TargetLayout, TargetModule, find_targets

SCALE = 2.0
RANK = 2


def tiny_t5() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=32,
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    return T5ForConditionalGeneration(config).eval()


def random_adapters(layout: TargetLayout, batch: int, seed: int, dtype: torch.dtype = torch.float32) -> LoraWeights:
    """Different factors for every target and every row, so a mixed-up slot changes the output."""
    g = torch.Generator().manual_seed(seed)
    groups = layout.groups.items()
    lora_A = {grp: torch.randn(n, batch, RANK, d_in, generator=g, dtype=dtype) for grp, (d_in, d_out, n) in groups}
    lora_B = {grp: torch.randn(n, batch, d_out, RANK, generator=g, dtype=dtype) for grp, (d_in, d_out, n) in groups}
    return LoraWeights(lora_A, lora_B, SCALE)


def merged(base: nn.Module, layout: TargetLayout, weights: LoraWeights, row: int) -> nn.Module:
    """A copy of the plain base with adapter `row` merged into its target weights."""
    model = copy.deepcopy(base)
    with torch.no_grad():
        for target, group, index in layout.slots():
            A = weights.lora_A[group][index, row].float()
            B = weights.lora_B[group][index, row].float()
            model.get_submodule(target.path).weight += weights.scale * B @ A
    return model


def logits(model: nn.Module, input_ids: torch.Tensor, decoder_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, decoder_input_ids=decoder_ids).logits


@pytest.fixture()
def t5() -> tuple[T5ForConditionalGeneration, T5ForConditionalGeneration, TargetLayout]:
    """(plain base, injected copy, layout) over every kind of target: q, k, v, o, wi, wo."""
    base = tiny_t5()
    layout = find_targets(base, ("q", "k", "v", "o", "wi", "wo"))
    injected = copy.deepcopy(base)
    return base, injected, layout


def test_each_example_runs_with_its_own_adapter_as_if_merged(t5):
    base, injected, layout = t5
    slots = inject_lora(injected, layout)
    weights = random_adapters(layout, batch=3, seed=1)
    input_ids = torch.randint(1, 32, (3, 5), generator=torch.Generator().manual_seed(2))
    decoder_ids = torch.randint(1, 32, (3, 4), generator=torch.Generator().manual_seed(3))
    with slots.attached(weights):
        mixed = logits(injected, input_ids, decoder_ids)
    for row in range(3):
        alone = logits(merged(base, layout, weights, row), input_ids[row : row + 1], decoder_ids[row : row + 1])
        assert torch.allclose(mixed[row], alone[0], atol=1e-4), f"row {row}"
    plain = logits(base, input_ids, decoder_ids)
    assert (mixed - plain).abs().max() > 1e-2  # the comparison means something only if adapters act


def test_outside_the_block_the_injected_model_is_the_base(t5):
    base, injected, layout = t5
    slots = inject_lora(injected, layout)
    input_ids, decoder_ids = torch.tensor([[3, 4, 5]]), torch.tensor([[0, 6]])
    plain = logits(base, input_ids, decoder_ids)
    assert torch.equal(logits(injected, input_ids, decoder_ids), plain)
    with slots.attached(None):  # "no adapter" is the base, not an error
        assert torch.equal(logits(injected, input_ids, decoder_ids), plain)
    with pytest.raises(RuntimeError, match="boom"), slots.attached(random_adapters(layout, 1, seed=4)):
        raise RuntimeError("boom")
    assert all(layer.factors is None for layer in slots.layers)  # an exception leaves no adapter attached
    assert torch.equal(logits(injected, input_ids, decoder_ids), plain)


def test_injection_keeps_parameters_keys_and_shapes_and_is_idempotent(t5):
    base, injected, layout = t5
    keys = {k: v.shape for k, v in base.state_dict().items()}
    weight = injected.get_submodule(layout.targets[0].path).weight
    slots = inject_lora(injected, layout)
    assert {k: v.shape for k, v in injected.state_dict().items()} == keys  # save_pretrained/checkpoints unchanged
    assert len(slots.layers) == len(layout.targets)
    for layer, (target, group, index) in zip(slots.layers, layout.slots(), strict=True):
        assert injected.get_submodule(target.path) is layer
        assert (layer.group, layer.index) == (group, index)
        assert (layer.in_features, layer.out_features) == (target.in_features, target.out_features)
    assert slots.layers[0].weight is weight  # the same Parameter: nothing copied
    again = inject_lora(injected, layout)
    assert all(a is b for a, b in zip(again.layers, slots.layers, strict=True))  # not wrapped twice
    assert all(type(injected.get_submodule(t.path).weight) is nn.Parameter for t in layout.targets)


def test_factors_in_another_dtype_are_cast_to_the_model(t5):
    base, injected, layout = t5
    slots = inject_lora(injected, layout)
    weights = random_adapters(layout, batch=1, seed=5, dtype=torch.float64)
    input_ids, decoder_ids = torch.tensor([[3, 4, 5]]), torch.tensor([[0, 6]])
    with slots.attached(weights):
        out = logits(injected, input_ids, decoder_ids)
    assert out.dtype == torch.float32
    assert torch.allclose(out, logits(merged(base, layout, weights, 0), input_ids, decoder_ids), atol=1e-4)


def test_a_linear_with_bias_keeps_its_bias():
    """T5 has no biases; other bases do, and the base output must include them."""
    torch.manual_seed(0)
    root = nn.Module()
    root.proj = nn.Linear(6, 4, bias=True)
    nn.init.uniform_(root.proj.bias, 1.0, 2.0)
    reference = copy.deepcopy(root.proj)
    layout = TargetLayout((TargetModule("encoder", 0, "self", "q", "proj", 6, 4),))
    slots = inject_lora(root, layout)
    x = torch.randn(2, 3, 6)
    A, B = torch.randn(1, 2, RANK, 6), torch.randn(1, 2, 4, RANK)
    with torch.no_grad():
        assert torch.equal(root.proj(x), reference(x))
        with slots.attached(LoraWeights({"6x4": A}, {"6x4": B}, SCALE)):
            out = root.proj(x)
    expected = torch.stack([reference(x[i]) + SCALE * x[i] @ (B[0, i] @ A[0, i]).T for i in range(2)]).detach()
    assert torch.allclose(out, expected, atol=1e-5)


def test_a_prepared_attachment_attaches_its_own_views_and_always_detaches(t5):
    """A decode loop attaches around every step: a prepared attachment must act exactly as its
    weights do, attach by reference only (the views it holds, not new ones), and leave nothing
    attached after the block, even on an exception."""
    base, injected, layout = t5
    slots = inject_lora(injected, layout)
    weights = random_adapters(layout, batch=2, seed=6, dtype=torch.float64)
    attachment = slots.prepare(weights)
    assert slots.prepare(None) is None
    assert all(factors[0].dtype == factors[1].dtype == torch.float32 for _, factors in attachment.layers)  # cast once, here
    input_ids = torch.randint(1, 32, (2, 5), generator=torch.Generator().manual_seed(7))
    decoder_ids = torch.randint(1, 32, (2, 3), generator=torch.Generator().manual_seed(8))
    with slots.attached(weights):
        direct = logits(injected, input_ids, decoder_ids)
    for _ in range(2):  # attaching again reuses it
        with slots.attached(attachment):
            assert all(layer.factors is factors for layer, factors in attachment.layers)
            assert [layer for layer, _ in attachment.layers] == slots.layers
            assert torch.equal(logits(injected, input_ids, decoder_ids), direct)
        assert all(layer.factors is None for layer in slots.layers)
    with pytest.raises(RuntimeError, match="boom"), slots.attached(attachment):
        raise RuntimeError("boom")
    assert all(layer.factors is None for layer in slots.layers)
    assert torch.equal(logits(injected, input_ids, decoder_ids), logits(base, input_ids, decoder_ids))
    kept = slots.prepare(attachment.weights.select([1]))  # a row left the batch: prepare the rest again
    with slots.attached(kept):
        alone = logits(injected, input_ids[1:], decoder_ids[1:])
    assert torch.allclose(alone[0], direct[1], atol=1e-5)
    assert (direct - logits(base, input_ids, decoder_ids)).abs().max() > 1e-2  # the adapters act
