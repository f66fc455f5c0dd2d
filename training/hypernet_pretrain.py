"""Stage 2: hypernetwork pretraining (missing from the authors' release).

A text is split into three segments a / b / c: a goes through the frozen encoder to the
generator (and to fusion), b is the adapted base's input, c its target; the loss is the
cross-entropy of c. Texts come from a corpus file (`tagi train --corpus`, plain text or JSONL,
read lazily; the paper used C4) or else the training tasks' own texts, a few of them joined
when one is too short, so pretraining teaches the generator to turn "context" into an adapter
that helps continue it, without any task labels.

Entry point: `run(recipe, inputs, out)` (the stage table, training.stages): creates the
checkpoint from the base (stage 0's, or the one `--base` gives) once and trains its generator
into out/checkpoint.
"""

from __future__ import annotations

import json
import random
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import torch
from tqdm.auto import tqdm

from hypernet.config import CheckpointConfig, InstructionEncoderConfig
from hypernet.encoders import sentence_encoder_config
from hypernet.errors import UserError
from hypernet.files import CONFIG_FILE
from hypernet.io import create_checkpoint, load_checkpoint, save_checkpoint
from hypernet.model import TagiModel
from training.common import TaskSet, pad_rows, shift_right, special_frame
from training.distributed import barrier, is_main
from training.loop import LoopConfig, resolve_device, train
from training.losses import IGNORE, cross_entropy
from training.presets import HypernetPretrainConfig

if TYPE_CHECKING:
    from training.presets import Preset
    from training.stages import StageInputs


class TaskTexts(Sequence[str]):
    """The training tasks' texts: every instruction, then every training pair as "input output".
    A view, not a list: an SNI task set's pairs stay on disk until a batch reads them."""

    def __init__(self, task_set: TaskSet) -> None:
        self.instructions, self.pairs = task_set.instructions, task_set.train

    def __len__(self) -> int:
        return len(self.instructions) + len(self.pairs)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]  # no slices: the loop asks by index
        if not 0 <= index < len(self):
            raise IndexError(index)  # also ends Sequence's iteration
        if index < len(self.instructions):
            return self.instructions[index]
        pair = self.pairs[index - len(self.instructions)]
        return f"{pair.input} {pair.output}"


def corpus(task_set: TaskSet) -> Sequence[str]:
    return TaskTexts(task_set)


class TextCorpus(Sequence[str]):
    """A corpus file read lazily: plain text (one document per line) or JSONL (*.jsonl, *.json;
    one object with a string "text" per line). Only the byte offset of each non-empty line is
    kept (8 bytes a document, found in one pass with a progress bar); a document is read from
    disk when a batch asks for it, so a C4-size file never sits in memory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.jsonl = self.path.suffix.lower() in (".jsonl", ".json")
        try:
            size = self.path.stat().st_size
            offsets = array("q")
            with (
                self.path.open("rb") as file,
                tqdm(total=size, unit="B", unit_scale=True, desc=f"indexing {self.path.name}", disable=size < 2**26) as bar,
            ):
                position = 0
                for line in file:
                    if line.strip():
                        offsets.append(position)
                    position += len(line)
                    bar.update(len(line))
        except OSError as error:
            raise UserError(f"cannot read corpus {self.path}: {error.strerror}") from None
        if not offsets:
            raise UserError(f"corpus {self.path} holds no text")
        self.offsets = offsets
        self._file: BinaryIO | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]  # no slices: the loop asks by index
        if self._file is None:
            self._file = self.path.open("rb")
        self._file.seek(self.offsets[index])
        line = self._file.readline()
        try:
            text = line.decode("utf-8").strip()
            if self.jsonl:
                text = json.loads(text)["text"] if text.startswith("{") else None
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError) as error:
            raise UserError(f"corpus {self.path}, byte {self.offsets[index]}: not {self._kind} ({error})") from None
        if not isinstance(text, str):
            raise UserError(f"corpus {self.path}, byte {self.offsets[index]}: not {self._kind}")
        return text

    @property
    def _kind(self) -> str:
        return 'a JSON object with a string "text"' if self.jsonl else "UTF-8 text"


def training_texts(task_set: TaskSet, config: HypernetPretrainConfig) -> Sequence[str]:
    """Stage 2's texts: the recipe's corpus file, else the training tasks' own texts."""
    return TextCorpus(config.corpus) if config.corpus is not None else corpus(task_set)


PIECE_CHARS = 32
"""Characters of a text read per wanted token: a corpus document (a C4 page) may be thousands of
tokens long and only 3 segments are used, so a text is cut (at a space) before it is tokenized.
A SentencePiece piece is at most 16 characters (its default limit), so the cut never shortens what
the segments take."""


def _piece(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0]


def pretrain_hypernet(
    model: TagiModel, task_set: TaskSet, out_dir: Path, config: HypernetPretrainConfig, loop: LoopConfig, resume: bool = True
) -> None:
    """Train model.generator in place; `out_dir` holds the loop state, log and plot."""
    texts = training_texts(task_set, config)
    tokenizer = model.tokenizer
    eos = tokenizer.eos_token_id
    before, after = special_frame(tokenizer)  # a and b are read as texts: framed as the tokenizer frames one
    n = config.segment_tokens
    limit = PIECE_CHARS * 3 * n

    def segment_a(rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """Segment a for the instruction encoder: its ids as they are when it reads the base's
        tokens, else its text in the encoder's own tokenizer (a sentence encoder)."""
        if model.instruction_tokenizer is tokenizer:
            return {"a_ids": pad_rows(rows, 0), "a_mask": pad_rows([[1] * len(r) for r in rows], 0)}
        texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
        a = model.instruction_tokenizer(texts, padding=True, truncation=True, max_length=4 * n, return_tensors="pt")
        return {"a_ids": a["input_ids"], "a_mask": a["attention_mask"]}

    def make_batch(indices: list[int], batch_seed: int) -> dict:
        rng = random.Random(batch_seed)
        a_rows, b_rows, c_rows = [], [], []
        for index in indices:
            ids: list[int] = []
            pieces = [_piece(texts[index], limit)]
            while len(ids) < 3 * n:
                ids = tokenizer(" ".join(pieces), add_special_tokens=False)["input_ids"]
                pieces.append(_piece(texts[rng.randrange(len(texts))], limit))
            ids = ids[: 3 * n]
            a_rows.append(before + ids[:n] + after)
            b_rows.append(before + ids[n : 2 * n] + after)
            c_rows.append(ids[2 * n :] + [eos])
        c = pad_rows(c_rows, IGNORE)
        return {
            **segment_a(a_rows),
            "input_ids": pad_rows(b_rows, 0),
            "attention_mask": pad_rows([[1] * len(r) for r in b_rows], 0),
            "labels": c,
            "decoder_input_ids": shift_right(c),
        }

    def loss_fn(batch: dict) -> tuple[torch.Tensor, dict]:
        encoding = model.encode_instruction_ids(batch["a_ids"], batch["a_mask"])
        lora = model.generate_lora(encoding)
        fused = model.fusion_states(encoding) if model.config.fusion else None
        logits = model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"], lora=lora, instruction=fused)
        loss = cross_entropy(logits, batch["labels"])
        return loss, {"ce": float(loss.detach())}

    train(model, len(texts), make_batch, loss_fn, loop, out_dir, name="stage2-hypernet-pretrain", resume=resume, settings=config)


def checkpoint_config(recipe: Preset) -> CheckpointConfig:
    """The trained checkpoint's config.json: the recipe's generator, instruction encoder (with the
    fingerprint of the one found here) and instruction template."""
    name = recipe.instruction_encoder
    encoder = InstructionEncoderConfig() if name == "base" else sentence_encoder_config(name)
    return CheckpointConfig(
        generator=recipe.generator,
        instruction_encoder=encoder,
        instruction_template=recipe.instruction_template,
        # a BERT-style encoder reads at most 512 positions
        max_instruction_tokens=1024 if encoder.kind == "base" else 512,
    )


def run(recipe: Preset, inputs: StageInputs, out: Path) -> None:
    """Stage 2 on the base; writes out/checkpoint, the checkpoint stage 3 starts from."""
    from training.stages import stage_loop

    checkpoint = out / "checkpoint"
    if is_main() and not (checkpoint / CONFIG_FILE).exists():
        create_checkpoint(inputs.results["base"], checkpoint, checkpoint_config(recipe), seed=recipe.seed, overwrite=True)
    barrier()  # every rank loads what rank 0 created
    model = load_checkpoint(checkpoint, device=resolve_device(inputs.device))
    pretrain_hypernet(
        model,
        inputs.task_set,
        out,
        recipe.hypernet_pretrain,
        stage_loop(recipe, "hypernet_pretrain.loop", inputs.device),
        resume=inputs.resume,
    )
    if is_main():
        save_checkpoint(model.to("cpu"), checkpoint, overwrite=True)
