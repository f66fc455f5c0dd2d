"""The TAGI model core: adapters as values, zero init, frozen base, pooling, fusion, batching."""

from __future__ import annotations

import pytest
import torch

from hypernet.errors import EmptyInstruction, InputTooLong
from hypernet.fusion import masked_mean
from hypernet.io import load_checkpoint

INSTRUCTION = "Sort the items of the list alphabetically."


def all_tensors(adapter) -> list[torch.Tensor]:
    w = adapter.weights
    return [*w.lora_A.values(), *w.lora_B.values(), adapter.instruction_encoding.states]


def test_same_instruction_gives_bit_identical_adapter_and_id(model, checkpoint_dir):
    first, second = model.adapter(INSTRUCTION), model.adapter(INSTRUCTION)
    reloaded = load_checkpoint(checkpoint_dir).adapter(INSTRUCTION)
    for other in (second, reloaded):
        assert other.adapter_id == first.adapter_id
        assert all(torch.equal(a, b) for a, b in zip(all_tensors(first), all_tensors(other)))
    different = model.adapter("Reverse the list.")
    assert different.adapter_id != first.adapter_id
    assert not torch.equal(different.weights.lora_B["64x64"], first.weights.lora_B["64x64"])


def test_adapter_id_depends_on_the_checkpoint(model, untrained_checkpoint_dir):
    other = load_checkpoint(untrained_checkpoint_dir)
    assert other.adapter(INSTRUCTION).adapter_id != model.adapter(INSTRUCTION).adapter_id


def test_untrained_generator_emits_a_zero_update(untrained_checkpoint_dir):
    model = load_checkpoint(untrained_checkpoint_dir)
    adapter = model.adapter(INSTRUCTION)
    assert all(torch.count_nonzero(b) == 0 for b in adapter.weights.lora_B.values())
    assert all(torch.count_nonzero(a) > 0 for a in adapter.weights.lora_A.values())
    inputs = ["apple, river", "seven, stone, 4"]
    assert model.generate(inputs, [adapter] * 2, fusion=False, max_new_tokens=6) == model.generate(
        inputs, [None] * 2, fusion=False, max_new_tokens=6
    )


def test_generator_covers_every_target_with_its_own_factors(model):
    weights = model.adapter(INSTRUCTION).weights
    expected = {g: count for g, (_, _, count) in model.layout.groups.items()}
    assert {g: a.shape[0] for g, a in weights.lora_A.items()} == expected
    # Learned per-target embeddings: two layers of the same shape get different factors.
    a = weights.lora_A["64x64"]
    assert not torch.allclose(a[0], a[1])
    # A must not be confined to a tiny subspace (the 8-wide bottleneck defect): rank of all A rows.
    rows = a.reshape(-1, a.shape[-1])
    assert torch.linalg.matrix_rank(rows) > 8


def test_an_optimizer_step_changes_the_generator_and_never_the_base(model):
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    generator_before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in model.generator.parameters()}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    batch = model.tokenize(["apple, river, stone", "paper, garden"], 64, "input")
    encoding = model.encode_instructions([INSTRUCTION, "Reverse the list."])
    logits = model(
        **batch, decoder_input_ids=torch.tensor([[0, 4, 5], [0, 6, 7]]), lora=model.generate_lora(encoding), instruction=encoding
    )
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.tensor([4, 5, 1, 6, 7, 1]))
    loss.backward()
    optimizer.step()
    assert all(torch.equal(base_before[k], v) for k, v in model.base.state_dict().items())
    assert any(not torch.equal(generator_before[k], v) for k, v in model.generator.state_dict().items())
    assert not model.base.training


def test_masked_mean_ignores_padding(model):
    states = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = masked_mean(states, mask)
    assert torch.allclose(pooled[0], states[0, :2].mean(0))
    assert torch.allclose(pooled[1], states[1].mean(0))
    short = "Reverse the list."
    alone = model.encode_instructions([short]).pooled[0]
    padded = model.encode_instructions([short, INSTRUCTION + " Then count the items and add seven."]).pooled[0]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_fusion_changes_outputs_and_can_be_switched_off(model):
    adapter = model.adapter(INSTRUCTION)
    batch = model.tokenize(["apple, river, stone"], 64, "input")
    decoder = torch.tensor([[0, 4, 5]])
    with torch.no_grad():
        fused = model(**batch, decoder_input_ids=decoder, lora=adapter.weights, instruction=adapter.instruction_encoding)
        plain = model(**batch, decoder_input_ids=decoder, lora=adapter.weights)
    assert (fused - plain).abs().max() > 1e-3


def test_mixed_batch_outputs_equal_each_request_alone(model):
    instructions = [INSTRUCTION, "Reverse the list.", "Count the words in the list and then add the number seven to it."]
    adapters = [model.adapter(text) for text in instructions]
    inputs = ["apple, river, stone", "green, 7, house, cloud", "seven bright table"]
    rows = [adapters[0], None, adapters[2], adapters[1]]
    row_inputs = [inputs[0], inputs[1], inputs[2], inputs[0]]
    fusion = [True, False, True, False]
    limits = [6, 3, 8, 5]
    together = model.generate(row_inputs, rows, fusion=fusion, max_new_tokens=limits)
    alone = [model.generate([x], [a], fusion=f, max_new_tokens=m)[0] for x, a, f, m in zip(row_inputs, rows, fusion, limits)]
    assert together == alone


def test_limits_and_bad_values_are_refused(model):
    with pytest.raises(ValueError, match="empty"):
        model.adapter("   ")
    with pytest.raises(InputTooLong, match="instruction"):
        model.adapter("word " * 500)
    with pytest.raises(InputTooLong, match="input"):
        model.generate(["apple " * 200], [None])
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(["apple"], [None], max_new_tokens=0)


def test_instruction_template_is_applied_to_user_text_only(model):
    """A checkpoint trained on "Definition: ..." prompts gets the same form from a bare instruction:
    the one template lives in the checkpoint config; an empty instruction stays refused under it."""
    from dataclasses import replace

    from hypernet.config import CheckpointConfig

    plain = model.config
    try:
        model.config = replace(plain, instruction_template="Definition: {instruction}")
        bare = model.adapter(INSTRUCTION)
        for empty in ("", "   ", "\n\t"):
            with pytest.raises(EmptyInstruction):
                model.adapter(empty)
        model.config = plain
        formatted = model.adapter(f"Definition: {INSTRUCTION}")
        assert all(torch.equal(a, b) for a, b in zip(all_tensors(bare), all_tensors(formatted)))
        assert bare.instruction == INSTRUCTION and bare.adapter_id != formatted.adapter_id
        untemplated = model.adapter(INSTRUCTION)
        assert untemplated.instruction_encoding.states.shape[1] < bare.instruction_encoding.states.shape[1]  # no prefix
        assert model.config.format_instruction("{x} braces stay") == "{x} braces stay"
    finally:
        model.config = plain
    assert (
        CheckpointConfig.from_dict(replace(plain, instruction_template="Task: {instruction}").to_dict()).instruction_template
        == "Task: {instruction}"
    )
    with pytest.raises(ValueError, match="instruction_template"):
        CheckpointConfig(instruction_template="no slot")
