"""The step-wise decoder: greedy equals transformers' generate, per-row seeds, stop strings,
deltas that add up to the text, and each row finishing at its own step."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

import hypernet
from hypernet.batching import stack_adapters
from hypernet.decoding import RowText, RowUpdate, Sampling, pick_tokens
from hypernet.files import DEFAULT_CHECKPOINT
from hypernet.fusion import concat_instructions

INSTRUCTIONS = ["Sort the items of the list alphabetically.", "Reverse the list.", "Count the words in the list."]
INPUTS = ["apple, river, stone", "green, 7, house, cloud", "seven bright table", "music paper", "window 3 cloud"]


@pytest.fixture(scope="module")
def shipped() -> hypernet.TagiModel:
    """The trained tiny checkpoint: its rows end with EOS at different steps."""
    return hypernet.load(DEFAULT_CHECKPOINT)


def shipped_batch(model: hypernet.TagiModel) -> tuple[list[str], list]:
    sort, reverse = (model.adapter(t) for t in ("Sort the numbers from smallest to largest.", "Reverse the order of the items."))
    return ["3, 88, 12, 40", "apple, river, stone, green", "7, 1", "music paper"], [sort, reverse, None, sort]


def collect(stream) -> tuple[list[str], dict[int, list[tuple[int, RowUpdate]]]]:
    """Texts from the deltas, and every row's updates with the step they came at."""
    steps = list(stream)
    by_row: dict[int, list[tuple[int, RowUpdate]]] = {}
    for step, updates in enumerate(steps):
        assert len({u.row for u in updates}) == len(updates), "one update per row per step"
        for update in updates:
            by_row.setdefault(update.row, []).append((step, update))
    texts = ["".join(u.delta for _, u in by_row[row]) for row in sorted(by_row)]
    return texts, by_row


def hf_reference(model, inputs, adapters, fusion, limits) -> tuple[list[str], list[int]]:
    """What transformers' generate(do_sample=False) gives: texts and generated token counts (EOS included)."""
    batch = model.tokenize(model.format_inputs(inputs), model.config.max_input_tokens, "input")
    lora = stack_adapters([a.weights if a else None for a in adapters])
    instruction = concat_instructions([a.instruction_encoding if a and f else None for a, f in zip(adapters, fusion)])
    tokens = model.generate_tokens(batch, lora, instruction, max(limits))
    eos = model.base.generation_config.eos_token_id
    rows = [row[1 : 1 + limit].tolist() for row, limit in zip(tokens, limits)]
    counts = [row.index(eos) + 1 if eos in row else len(row) for row in rows]
    return model.tokenizer.batch_decode([row[:n] for row, n in zip(rows, counts)], skip_special_tokens=True), counts


@pytest.mark.parametrize("checkpoint", ["test", "shipped"])
def test_greedy_equals_transformers_generate_on_a_mixed_batch(checkpoint, model, shipped):
    if checkpoint == "shipped":
        model = shipped
        inputs, adapters = shipped_batch(model)
        inputs, adapters = inputs + inputs[:1], adapters + [None]
    else:
        made = [model.adapter(t) for t in INSTRUCTIONS]
        inputs, adapters = INPUTS, [made[0], None, made[2], made[1], made[0]]
    fusion = [True, False, True, False, True]
    limits = [6, 3, 20, 9, 14]
    expected, counts = hf_reference(model, inputs, adapters, fusion, limits)
    texts, by_row = collect(model.generate_stream(inputs, adapters, fusion=fusion, max_new_tokens=limits))
    assert texts == expected
    assert model.generate(inputs, adapters, fusion=fusion, max_new_tokens=limits) == expected
    prompt = model.tokenize(model.format_inputs(inputs), 64, "input")["attention_mask"].sum(dim=1).tolist()
    for row, updates in by_row.items():
        *_, (step, last) = updates
        # The row's one final update comes at the step of its last token, and nothing after it.
        assert [u.finish_reason is not None for _, u in updates].count(True) == 1
        assert last.completion_tokens == counts[row] == step + 1
        assert last.finish_reason == ("length" if counts[row] == limits[row] else "stop")
        assert last.prompt_tokens == prompt[row]
    if checkpoint == "shipped":
        assert any(by_row[r][-1][1].finish_reason == "stop" for r in by_row), "some row must end with EOS early"


def test_a_seeded_row_samples_the_same_alone_and_among_others(shipped):
    inputs, adapters = shipped_batch(shipped)
    seeded = Sampling(temperature=1.5, top_p=0.95, seed=7)
    others = [Sampling(temperature=1.0, seed=1), Sampling(), Sampling(temperature=2.0, seed=3)]
    alone = shipped.generate(inputs[1:2], adapters[1:2], max_new_tokens=12, sampling=seeded)
    together = shipped.generate(
        inputs + inputs[1:2],
        adapters + adapters[1:2],
        max_new_tokens=[4, 12, 2, 16, 12],
        sampling=[others[0], seeded, others[1], others[2], seeded],
    )
    assert together[1] == together[4] == alone[0]
    draws = {
        shipped.generate(inputs[1:2], adapters[1:2], max_new_tokens=12, sampling=replace(seeded, seed=s))[0] for s in range(8)
    }
    assert len(draws) > 1, "different seeds must be able to give different outputs"


def test_temperature_zero_or_a_tiny_nucleus_is_greedy(shipped):
    inputs, adapters = shipped_batch(shipped)
    greedy = shipped.generate(inputs, adapters, max_new_tokens=12)
    assert shipped.generate(inputs, adapters, max_new_tokens=12, sampling=Sampling(temperature=0.0, top_p=0.1, seed=5)) == greedy
    # top_p below the top token's probability keeps only that token: sampling becomes argmax.
    assert shipped.generate(inputs, adapters, max_new_tokens=12, sampling=Sampling(temperature=1.0, top_p=1e-6)) == greedy
    # A temperature so small that logits / T overflows is greedy too (its limit), not NaN and "".
    assert shipped.generate(inputs, adapters, max_new_tokens=12, sampling=Sampling(temperature=1e-300, seed=1)) == greedy


def test_nucleus_draws_only_from_the_top_p_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = set()
    for seed in range(200):
        generator = torch.Generator().manual_seed(seed)
        seen.add(int(pick_tokens(logits, [Sampling(temperature=1.0, top_p=0.7)], [generator])[0]))
    assert seen == {0, 1}
    greedy = pick_tokens(logits, [Sampling()], [None])
    assert int(greedy[0]) == 0
    # A top_p that float32 rounds to 0 (schemathesis sent 5e-324) still keeps the top token.
    assert int(pick_tokens(logits, [Sampling(temperature=2.0, top_p=5e-324)], [torch.Generator().manual_seed(0)])[0]) == 0


def test_stop_strings_cut_the_text_and_are_never_streamed(shipped):
    inputs, adapters = shipped_batch(shipped)
    full = shipped.generate(inputs, adapters, max_new_tokens=16)
    assert full[0] == "3, 12, 40, 88" and full[1] == "green, stone, apple, river"
    stops = [Sampling(stop=("40",)), Sampling(stop=("zzz", "ne, ap")), Sampling(stop=("absent",)), Sampling(stop=(", 1",))]
    texts, by_row = collect(shipped.generate_stream(inputs, adapters, max_new_tokens=16, sampling=stops))
    assert texts == ["3, 12, ", "green, sto", full[2], full[3].split(", 1")[0]]
    # Deltas only append, so text that adds up to the cut text never streamed any of a stop string.
    for row in (0, 1):
        assert by_row[row][-1][1].finish_reason == "stop"
        assert by_row[row][-1][1].completion_tokens < 8, "a stop string ends the row early"
    # A sampled row with a stop string draws the same tokens up to it.
    sampling = Sampling(temperature=1.5, seed=2)
    free = shipped.generate(inputs[1:2], adapters[1:2], max_new_tokens=16, sampling=sampling)[0]
    stopped = shipped.generate(inputs[1:2], adapters[1:2], max_new_tokens=16, sampling=replace(sampling, stop=(",",)))[0]
    assert "," in free and stopped == free.split(",")[0]


@pytest.mark.parametrize("clean_up", [False, True])
def test_deltas_add_up_to_the_decoded_text(shipped, clean_up):
    """Random token sequences, spaces and punctuation included: every prefix sent is a prefix of
    the final text, and the deltas concatenate to exactly tokenizer.decode of all tokens."""
    tokenizer = shipped.tokenizer
    old = tokenizer.clean_up_tokenization_spaces
    tokenizer.clean_up_tokenization_spaces = clean_up
    try:
        vocab = list(range(len(tokenizer)))
        punctuation = tokenizer.convert_tokens_to_ids(["▁", "▁.", ".", ",", "'", "▁'", "t", "s", "n"])
        pool = vocab + [t for t in punctuation if t != tokenizer.unk_token_id] * 40
        rng = random.Random(0)
        for _ in range(200):
            tokens = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
            stop = (tokenizer.decode(tokens[-2:], skip_special_tokens=True)[:2],) if rng.random() < 0.3 else ()
            stop = tuple(s for s in stop if s)
            row, sent = RowText(tokenizer, stop), ""
            for token in tokens:
                sent += row.add(token)
                if row.stopped:
                    break
            sent += row.finish()
            full = tokenizer.decode(row.tokens, skip_special_tokens=True)
            expected = full[: min(full.find(s) for s in stop)] if row.stopped else full
            assert sent == expected, (tokens, stop)
    finally:
        tokenizer.clean_up_tokenization_spaces = old


def test_the_stream_leaves_no_adapter_attached_and_no_grad_mode_between_steps(model):
    adapter = model.adapter(INSTRUCTIONS[0])
    stream = model.generate_stream(INPUTS[:2], adapter, max_new_tokens=5)
    for _ in stream:
        assert torch.is_grad_enabled()
        assert all(layer.factors is None for layer in model.slots.layers)


def test_bad_settings_are_refused(model):
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=-0.5)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0.0)
    with pytest.raises(ValueError, match="stop"):
        Sampling(stop=("",))
    with pytest.raises(ValueError, match="one value per input"):
        model.generate(INPUTS[:2], None, sampling=[Sampling()])
