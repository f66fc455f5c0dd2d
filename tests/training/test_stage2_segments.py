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
            calls.append((name, None if ids is None else ids.detach().clone()))

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
