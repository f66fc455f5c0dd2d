"""A decoder-only base: per-row LoRA with the key/value cache equals PEFT running each adapter
alone, fusion's prefix equals reading the instruction in the same sequence, and the training
forward scores exactly the answer tokens. For the Llama, Qwen2 and GPT-2 layouts (GPT-2's Conv1D
stores its weights transposed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from transformers import AutoModelForCausalLM

from hypernet.batching import stack_adapters
from hypernet.causal import CausalTagiModel
from hypernet.config import CheckpointConfig, GeneratorConfig, InstructionEncoderConfig
from hypernet.errors import UserError
from hypernet.families import FAMILIES, answer_ids
from hypernet.fusion import concat_instructions
from hypernet.io import create_checkpoint, load_checkpoint, peft_state_dict
from hypernet.tiny_causal import CAUSAL_PRESETS, build_tiny_causal_base
from training.common import IGNORE, shift_right

INSTRUCTIONS = ["Reverse the list.", "Sort the items of the list alphabetically.", "Count the words in the list."]
INPUTS = ["apple, river, stone", "green, 7, house, cloud", "seven bright table", "paper, garden"]
TEXTS = INSTRUCTIONS + INPUTS + ["the answer is a list of words", "one two three four five six seven"]
STEPS = 6
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def causal(request, tmp_path_factory) -> tuple[CausalTagiModel, Path]:
    family = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(family.name)
    build_tiny_causal_base(TEXTS, root / "base", family.name, CAUSAL_PRESETS["micro"], seed=0)
    generator = GeneratorConfig(rank=8, target_modules=family.module_names, embed_dim=16, attention_heads=2)
    create_checkpoint(root / "base", root / "ckpt", CheckpointConfig(generator=generator), seed=0)
    model = load_checkpoint(root / "ckpt")
    torch.manual_seed(1)
    with torch.no_grad():  # a trained generator's B is not zero: make every adapter move the logits
        for head in model.generator.heads_B.values():
            head.weight.normal_(std=0.5)
            head.bias.normal_(std=0.5)
    return model, root


def peft_reference(model: CausalTagiModel, root: Path, adapter) -> torch.nn.Module:  # noqa: ANN001
    """The base in PEFT with `adapter`'s factors loaded under PEFT's own keys; no adapter: the plain base."""
    base = AutoModelForCausalLM.from_pretrained(root / "base", use_safetensors=True).eval()
    if adapter is None:
        return base
    family = model.family
    config = LoraConfig(
        r=model.config.generator.rank,
        lora_alpha=model.config.generator.alpha,
        target_modules=list(model.config.generator.target_modules),
        lora_dropout=0.0,
        fan_in_fan_out=family.fan_in_fan_out,
        task_type="CAUSAL_LM",
    )
    peft = get_peft_model(base, config)
    result = set_peft_model_state_dict(peft, peft_state_dict(adapter))
    assert not [k for k in result.unexpected_keys if "lora" in k]
    return peft.eval()


def test_family_and_targets(causal):
    model, _ = causal
    assert isinstance(model, CausalTagiModel)
    names = {t.name for t in model.layout.targets}
    assert names == set(model.family.module_names)
    assert {t.stack for t in model.layout.targets} == {"decoder"}
    assert len(model.layout.targets) == 2 * (4 if model.family.fan_in_fan_out else 7)


def test_mixed_batch_with_kv_cache_matches_peft_alone(causal):
    model, root = causal
    adapters = model.adapters(INSTRUCTIONS)
    rows = [adapters[0], adapters[1], None, adapters[2]]
    batch = model.tokenize(model.format_inputs(INPUTS), 64, "input")
    lora = stack_adapters([a.weights if a else None for a in rows])
    stepper = model.stepper(batch["input_ids"], batch["attention_mask"], None, model.slots.prepare(lora))
    plain = model.stepper(batch["input_ids"], batch["attention_mask"], None, None)
    ours, base_logits, tokens = [], [], None
    with torch.no_grad():
        for _ in range(STEPS):
            logits = stepper.logits(tokens)
            base_logits.append(plain.logits(tokens))
            ours.append(logits)
            tokens = logits.argmax(dim=-1)
    generated = torch.stack([step.argmax(dim=-1) for step in ours], dim=1)  # (b, STEPS)

    for i, adapter in enumerate(rows):
        reference = peft_reference(model, root, adapter)
        prompt = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        with torch.no_grad():
            sequence = torch.cat([prompt, generated[i, :-1]])[None]
            theirs = reference(input_ids=sequence).logits[0, len(prompt) - 1 :]  # the logits of each decode step
        mine = torch.stack([step[i] for step in ours])
        assert (mine - theirs).abs().max().item() <= TOLERANCE, f"row {i}"
        if adapter is not None:  # the comparison means something only if the adapter moves the logits
            assert (mine - torch.stack([step[i] for step in base_logits])).abs().max().item() > 1e-2


def test_generate_stream_equals_greedy_steps_and_rows_are_independent(causal):
    model, _ = causal
    adapters = model.adapters(INSTRUCTIONS[:2])
    alone = [model.generate([text], adapter, fusion=False, max_new_tokens=STEPS)[0] for text, adapter in zip(INPUTS, adapters)]
    together = model.generate(INPUTS[:2], adapters, fusion=False, max_new_tokens=STEPS)
    assert together == alone
    tokens = model.generate_tokens(model.tokenize(model.format_inputs(INPUTS[:1]), 64, "input"), adapters[0].weights, None, STEPS)
    assert model.tokenizer.decode(tokens[0], skip_special_tokens=True) == alone[0]


def test_fusion_prefix_equals_the_instruction_read_in_the_same_sequence(causal):
    """Without an adapter, attending to the instruction's prefix is reading instruction + input as
    one sequence (positions continue after the instruction); a row without fusion is unaffected."""
    model, root = causal
    adapters = model.adapters(INSTRUCTIONS[:2])
    fusion = concat_instructions([adapters[0].instruction_encoding, None, adapters[1].instruction_encoding])
    inputs = INPUTS[:3]
    batch = model.tokenize(model.format_inputs(inputs), 64, "input")
    stepper = model.stepper(batch["input_ids"], batch["attention_mask"], fusion, None)
    with torch.no_grad():
        first = stepper.logits(None)
        second = stepper.logits(first.argmax(dim=-1))
    base = peft_reference(model, root, None)
    for i, instruction in enumerate([INSTRUCTIONS[0], None, INSTRUCTIONS[1]]):
        prompt = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        prefix = torch.tensor(model.instruction_ids(instruction)) if instruction else prompt[:0]
        sequence = torch.cat([prefix, prompt, first[i].argmax()[None]])[None]
        with torch.no_grad():
            theirs = base(input_ids=sequence).logits[0, -2:]
        assert (torch.stack([first[i], second[i]]) - theirs).abs().max().item() <= TOLERANCE, f"row {i}"


def test_training_forward_scores_the_answer_tokens(causal):
    """forward(prompt, shift_right(labels)) gives, at t, the logits that predict labels[t]: those
    of PEFT's full-sequence pass at the prompt's last token and the answer's tokens."""
    model, root = causal
    adapter = model.adapter(INSTRUCTIONS[0])
    answers = ["river, stone", "cloud, house, 7, green"]
    batch = model.tokenize(model.format_inputs(INPUTS[:2]), 64, "input")
    rows = [answer_ids(model.tokenizer, text) for text in answers]
    labels = torch.full((2, max(map(len, rows))), IGNORE)
    for i, row in enumerate(rows):
        labels[i, : len(row)] = torch.tensor(row)
    lora = stack_adapters([adapter.weights] * 2)
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], shift_right(labels), lora=lora)
    assert logits.shape[:2] == labels.shape
    reference = peft_reference(model, root, adapter)
    for i, row in enumerate(rows):
        prompt = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        with torch.no_grad():
            theirs = reference(input_ids=torch.cat([prompt, torch.tensor(row)])[None]).logits[0, len(prompt) - 1 : -1]
        assert (logits[i, : len(row)] - theirs).abs().max().item() <= TOLERANCE


def test_target_names_of_another_family_are_refused(causal, tmp_path):
    _, root = causal
    config = CheckpointConfig(generator=GeneratorConfig(target_modules=("q", "v")))
    with pytest.raises(UserError, match="not .* module names"):
        create_checkpoint(root / "base", tmp_path / "bad", config)


@pytest.mark.parametrize("family", ["mistral", "qwen3"])
def test_other_llama_layouts_run_with_adapters_and_fusion(family, tmp_path):
    build_tiny_causal_base(TEXTS, tmp_path / "base", family, CAUSAL_PRESETS["micro"], seed=0)
    generator = GeneratorConfig(rank=8, target_modules=FAMILIES[family].module_names, embed_dim=16, attention_heads=2)
    create_checkpoint(tmp_path / "base", tmp_path / "ckpt", CheckpointConfig(generator=generator), seed=0)
    model = load_checkpoint(tmp_path / "ckpt")
    assert len(model.layout.targets) == 2 * 7
    adapter = model.adapter(INSTRUCTIONS[0])
    assert model.generate(INPUTS[:2], [adapter, None], fusion=[True, False], max_new_tokens=3) == [
        model.generate([text], row, fusion=fused, max_new_tokens=3)[0]
        for text, row, fused in zip(INPUTS, [adapter, None], [True, False])
    ]


def test_instruction_layer_is_read_and_checked(causal, tmp_path):
    model, root = causal
    generator = model.config.generator
    config = CheckpointConfig(generator=generator, instruction_encoder=InstructionEncoderConfig(layer=1))
    create_checkpoint(root / "base", tmp_path / "layer1", config, seed=0)
    middle = load_checkpoint(tmp_path / "layer1").encode_instructions(INSTRUCTIONS[:1])
    last = model.encode_instructions(INSTRUCTIONS[:1])
    assert middle.states.shape == last.states.shape and not torch.allclose(middle.states, last.states)
    assert torch.equal(middle.prefix.keys[0], last.prefix.keys[0])  # the prefix does not depend on the layer read
    bad = CheckpointConfig(generator=generator, instruction_encoder=InstructionEncoderConfig(layer=9))
    with pytest.raises(UserError, match="layer 9 does not exist"):
        create_checkpoint(root / "base", tmp_path / "layer9", bad)


def test_init_refuses_an_unsupported_family_in_one_line(tmp_path, capsys):
    from hypernet.cli import main

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    assert main(["init", "--base", str(tmp_path / "bert"), "--out", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bert" in err and "qwen2" in err
    assert not (tmp_path / "ckpt").exists()


def test_init_on_a_qwen2_base_writes_a_causal_checkpoint_with_the_family_targets(tmp_path):
    from hypernet.cli import main

    build_tiny_causal_base(TEXTS, tmp_path / "base", "qwen2", CAUSAL_PRESETS["micro"], seed=0, chat_template=True)
    assert main(["init", "--base", str(tmp_path / "base"), "--out", str(tmp_path / "ckpt")]) == 0
    model = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(model, CausalTagiModel)
    assert model.config.generator.target_modules == FAMILIES["qwen2"].default_targets
    assert model.config.input_template.startswith("<|im_start|>user\n{input}")
    assert model.generate(["apple, pear"], model.adapter(INSTRUCTIONS[0]), max_new_tokens=2)[0] is not None


def test_a_sentence_encoder_on_a_decoder_needs_fusion_off(tmp_path):
    """Fusion's prefix is the base's own pass over the instruction: with a sentence encoder there is
    none, so a config that asks for fusion is refused, and one without fusion works."""
    from hypernet.encoders import sentence_encoder_config

    build_tiny_causal_base(TEXTS, tmp_path / "base", "llama", CAUSAL_PRESETS["micro"], seed=0)
    generator = GeneratorConfig(rank=8, target_modules=("q_proj", "v_proj"), embed_dim=16, attention_heads=2)
    encoder = sentence_encoder_config("all-minilm-l6-v2")
    with pytest.raises(UserError, match="fusion"):
        create_checkpoint(
            tmp_path / "base", tmp_path / "fused", CheckpointConfig(generator=generator, instruction_encoder=encoder)
        )
    config = CheckpointConfig(generator=generator, instruction_encoder=encoder, fusion=False)
    create_checkpoint(tmp_path / "base", tmp_path / "plain", config)
    sentence = load_checkpoint(tmp_path / "plain")
    assert sentence.generate(INPUTS[:1], sentence.adapter(INSTRUCTIONS[0]), max_new_tokens=2)[0] is not None
