"""Stage 2's a / b / c split, watched on the real model during a real training step: a reaches
the generator, b is the adapted base's input, c its target; the three are disjoint, each
`segment_tokens` long, and together one contiguous run of a training text."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from support import make_checkpoint

from hypernet.io import load_checkpoint
from training.common import load_task_set
from training.hypernet_pretrain import corpus, pretrain_hypernet
from training.loop import LoopConfig
from training.presets import HypernetPretrainConfig
from training.suite import SuiteConfig, build_suite
from training.suite_files import write_suite

SEGMENT = 5


def _content(row: torch.Tensor, eos: int) -> list[int]:
    """A padded segment's tokens before its end-of-sequence token (which must be there)."""
    ids = row.tolist()
    assert eos in ids, ids
    return ids[: ids.index(eos)]


def test_segments_are_disjoint_contiguous_and_each_in_its_role(tmp_path: Path):
    checkpoint = make_checkpoint(tmp_path, ("q", "v"), trained=True)
    suite = tmp_path / "suite"
    small = SuiteConfig(train_instances=8, test_instances=2, train_compositions=2, unseen_compositions=1)
    write_suite(build_suite(0, small), suite)
    (tmp_path / "tasks").mkdir()
    for path in sorted((suite / "train").glob("*.json"))[:3]:
        shutil.copy(path, tmp_path / "tasks" / path.name)
    task_set = load_task_set([str(tmp_path / "tasks")], held_back=2, seed=0)
    model = load_checkpoint(checkpoint)
    eos = model.tokenizer.eos_token_id

    calls: list[tuple[str, torch.Tensor | None]] = []
    encoder, decoder = model.base.encoder, model.base.decoder

    def watch(name: str):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            calls.append((name, ids.detach().clone() if isinstance(ids, torch.Tensor) else None))

        return hook

    handles = [
        encoder.register_forward_pre_hook(watch("encoder"), with_kwargs=True),
        decoder.register_forward_pre_hook(watch("decoder"), with_kwargs=True),
        model.generator.register_forward_pre_hook(watch("generator"), with_kwargs=True),
    ]
    loop = LoopConfig(steps=1, batch_size=4, lr=1e-3, warmup_steps=0, checkpoint_every=10, log_every=1, device="cpu")
    try:
        pretrain_hypernet(model, task_set, tmp_path / "stage2", HypernetPretrainConfig(segment_tokens=SEGMENT), loop)
    finally:
        for handle in handles:
            handle.remove()

    # One step: a through the encoder, then the generator reads it, then b through the (adapted)
    # encoder and the decoder predicts c.
    assert [name for name, _ in calls] == ["encoder", "generator", "encoder", "decoder"]
    a_ids, b_ids, decoder_ids = calls[0][1], calls[2][1], calls[3][1]
    assert a_ids.shape[0] == b_ids.shape[0] == decoder_ids.shape[0] == loop.batch_size
    texts = [model.tokenizer(text, add_special_tokens=False)["input_ids"] for text in corpus(task_set)]
    for row in range(loop.batch_size):
        a, b = _content(a_ids[row], eos), _content(b_ids[row], eos)
        assert decoder_ids[row, 0].item() == model.base.config.decoder_start_token_id
        c = _content(torch.cat([decoder_ids[row, 1:], torch.tensor([eos])]), eos)  # the target, shifted right by one
        assert len(a) == len(b) == len(c) == SEGMENT, (a, b, c)
        joined = a + b + c
        # Contiguous and in order: the start of a training text's tokens (a row is a text, then
        # others appended until it is long enough), so a, b and c neither overlap nor skip.
        assert any(joined[: len(t)] == t[: len(joined)] for t in texts if t), joined


def test_a_sentence_encoder_reads_segment_a_as_text_in_its_own_tokenizer(tmp_path: Path):
    """With an external encoder, segment a is the same stretch of text, re-tokenized by the encoder's
    tokenizer (base ids mean nothing to it); b and c stay base tokens."""
    from dataclasses import replace

    from hypernet.encoders import sentence_encoder_config
    from hypernet.io import create_checkpoint

    base_checkpoint = make_checkpoint(tmp_path, ("q", "v"), trained=False)
    checkpoint = tmp_path / "sentence"
    config = load_checkpoint(base_checkpoint).config
    config = replace(config, instruction_encoder=sentence_encoder_config("all-minilm-l6-v2"))
    create_checkpoint(base_checkpoint / "base", checkpoint, config)
    suite = tmp_path / "suite"
    write_suite(
        build_suite(0, SuiteConfig(train_instances=8, test_instances=2, train_compositions=2, unseen_compositions=1)), suite
    )
    task_set = load_task_set([str(suite / "train")], held_back=2, seed=0)
    model = load_checkpoint(checkpoint)
    base_tokenizer, eos = model.tokenizer, model.tokenizer.eos_token_id

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [
        model.instruction_encoder.register_forward_pre_hook(lambda m, args: seen.append((args[0].clone(), args[1].clone()))),
        model.base.encoder.register_forward_pre_hook(
            lambda m, args, kwargs: seen.append((kwargs["input_ids"].clone(), None)), with_kwargs=True
        ),
    ]
    loop = LoopConfig(steps=1, batch_size=4, lr=1e-3, warmup_steps=0, checkpoint_every=10, log_every=1, device="cpu")
    try:
        pretrain_hypernet(model, task_set, tmp_path / "stage2", HypernetPretrainConfig(segment_tokens=SEGMENT), loop)
    finally:
        for handle in handles:
            handle.remove()

    (a_ids, a_mask), (b_ids, _) = seen[0], seen[1]
    texts = [base_tokenizer(text, add_special_tokens=False)["input_ids"] for text in corpus(task_set)]
    checked = 0
    for row in range(loop.batch_size):
        b = _content(b_ids[row], eos)
        # the row's first text, when it alone holds a and b: a is the SEGMENT base tokens before b
        starts = [t for t in texts if len(t) >= 2 * SEGMENT and t[SEGMENT : 2 * SEGMENT] == b]
        if not starts:
            continue
        expected = model.instruction_tokenizer(base_tokenizer.decode(starts[0][:SEGMENT], skip_special_tokens=True))["input_ids"]
        got = a_ids[row][a_mask[row].bool()].tolist()
        assert got == expected
        checked += 1
    assert checked >= 1
