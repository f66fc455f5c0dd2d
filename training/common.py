"""Pieces every stage shares: which instances a stage may train on, text -> tensors, and the
formats stages hand each other (a base directory of any family, the teachers' index). Stages import these
from here, never from each other.

Held-back instances: every training task keeps `held_back` instances that no stage trains
on (split by `training.data.split_instances`, seeded), so "the meta-trained teacher reaches
80% on held-back instances of the training tasks" is measured on unseen inputs. Held-out
*tasks* never reach a stage at all: stages receive task files, and the pipeline hands them
only the `train/` split.
"""

from __future__ import annotations

import json
import random
from array import array
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hypernet.causal import answer_logits as causal_answer_logits
from hypernet.chat import input_template_for
from hypernet.config import CheckpointConfig
from hypernet.families import answer_ids, load_base, load_base_tokenizer, read_family
from hypernet.fusion import InstructionEncoding, concat_instructions
from hypernet.model import TagiModel
from training.data import Task, exact_match, format_concat, format_instruction, label_definition, load_tasks, split_instances
from training.losses import IGNORE, cross_entropy


@dataclass(frozen=True)
class Pair:
    """One training example of a task."""

    task: int  # index into the task list
    input: str
    output: str


@dataclass(frozen=True)
class TaskSet:
    tasks: list[Task]
    instructions: list[str]  # one per task, in the prompt format used everywhere
    # Grouped by task, in task order. A list for the synthetic world; for SNI a lazy
    # training.sni.StoredPairs (indexing decodes one pair), so consumers index or iterate.
    train: Sequence[Pair]
    held_back: Sequence[Pair]

    def categories(self) -> list[str]:
        return [primitive_group(t.category) for t in self.tasks]


class PairsAt(Sequence[Pair]):
    """The pairs of `base` at `indices`: a selection that keeps 8 bytes per pair, not the pairs
    (selecting from a stored SNI task set must not turn it into a list of objects)."""

    def __init__(self, base: Sequence[Pair], indices: array) -> None:
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, index: int) -> Pair: ...

    @overload
    def __getitem__(self, index: slice) -> PairsAt: ...

    def __getitem__(self, index: int | slice) -> Pair | PairsAt:
        if isinstance(index, slice):
            return PairsAt(self.base, self.indices[index])
        return self.base[self.indices[index]]


def primitive_group(category: str) -> str:
    """Report compositions as one group; single primitives by name."""
    return "composition" if category.startswith("composition") else category


def load_task_set(
    paths: list[str | Path], held_back: int, seed: int, prompt_format: str = "def", max_instances: int | None = None
) -> TaskSet:
    tasks = load_tasks(paths, max_instances=max_instances)
    if not tasks:
        raise ValueError("no tasks given")
    train: list[Pair] = []
    held: list[Pair] = []
    for index, task in enumerate(tasks):
        fit, back = task_pairs(index, task, held_back, seed)
        train += fit
        held += back
    return TaskSet(tasks, [format_instruction(t, prompt_format) for t in tasks], train, held)


def task_pairs(index: int, task: Task, held_back: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(training, held-back) pairs of task number `index`: `held_back` of its instances, but
    never all of them (every task keeps a pair to train on), split by
    `split_instances`. The one rule both the eager and the stored (training.sni) task sets use."""
    keep = min(held_back, max(0, len(task.instances) - 1))
    fit, back = split_instances(task, keep, seed)
    return [Pair(index, i.input, i.outputs[0]) for i in fit], [Pair(index, i.input, i.outputs[0]) for i in back]


class InstructionCache:
    """Bare instruction -> its encoding by the frozen instruction encoder, computed once.

    Training shows the generator the same few hundred wordings thousands of times; the encoder
    is frozen, so re-running it (a 22M-parameter sentence encoder costs more than a tiny base's
    whole step) would only burn time. Each text is encoded alone, unpadded, so a batch's
    encoding does not depend on what else is in it."""

    def __init__(self, model: TagiModel) -> None:
        self.model = model
        self.cache: dict[str, InstructionEncoding] = {}

    def __call__(self, instructions: list[str]) -> InstructionEncoding:
        for text in instructions:
            if text not in self.cache:
                self.cache[text] = self.model.encode_instructions([text])
        return concat_instructions([self.cache[text] for text in instructions])


def fit_instruction(model: TagiModel, text: str) -> str:
    """`text` cut so that, in the checkpoint's template, it fits max_instruction_tokens (Tk-Instruct
    cuts its 1024-token prompts the same way); a text that fits is returned as it is."""
    tokenizer, limit = model.instruction_tokenizer, model.config.max_instruction_tokens

    def overflow(candidate: str) -> int:
        return len(tokenizer(model.format_instruction(candidate))["input_ids"]) - limit

    over = overflow(text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if over > 0 else []
    while over > 0:  # re-tokenising a decoded cut may merge pieces: cut again until it fits
        ids = ids[: len(ids) - over]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        over = overflow(text)
    return text


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_tokens: int, padding_side: str | None = None
) -> dict[str, torch.Tensor]:
    """Padded ids + mask, truncated to max_tokens (the training stages' inputs are short;
    truncation only guards against an odd long text). Prompts are framed as the tokenizer does by
    default (T5: EOS after; a causal tokenizer: BOS before, if it adds one)."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt", padding_side=padding_side)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    """Rows of ids right-padded with `value` into one tensor."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def special_frame(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts (before, after) a text: T5 ([], [EOS]), a Llama tokenizer
    ([BOS], []), a GPT-2-style one ([], []); for ids cut from a longer text that are then read as a
    text of their own (stage 2's segments)."""
    framed, bare = tokenizer("a")["input_ids"], tokenizer("a", add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(framed) - len(bare) + 1) if framed[i : i + len(bare)] == bare)
    return framed[:start], framed[start + len(bare) :]


def encode_labels(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_tokens: int) -> torch.Tensor:
    """Answer ids ending in EOS, IGNORE-padded: the one label format of every family. T5's tokenizer
    appends EOS itself, a causal one does not and pads with its EOS (so padding cannot be told from
    the answer's end by id): hypernet.families.answer_ids gives both the same ids, and a long answer
    is cut to max_tokens keeping its EOS, as T5's truncation does."""
    rows = []
    for text in texts:
        ids = answer_ids(tokenizer, text)
        rows.append(ids if len(ids) <= max_tokens else ids[: max_tokens - 1] + ids[-1:])
    return pad_rows(rows, IGNORE)


def shift_right(labels: torch.Tensor, start_id: int = 0, pad_id: int = 0) -> torch.Tensor:
    """Decoder inputs: the start token, then the labels shifted by one (ignored -> pad). A causal
    model ignores column 0 and reads the rest after the prompt (answer_logits)."""
    shifted = labels.new_full(labels.shape, pad_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start_id
    shifted[shifted == IGNORE] = pad_id
    return shifted


def seq2seq_batch(
    tokenizer: PreTrainedTokenizerBase, inputs: list[str], outputs: list[str], max_input: int, max_output: int
) -> dict[str, torch.Tensor]:
    """The batch of every stage and family: prompt ids + mask, labels (answer + EOS, IGNORE-padded)
    and decoder_input_ids = shift_right(labels). A T5 encodes the prompt and decodes the answer; a
    causal model reads prompt then answer as one sequence (answer_logits, CausalTagiModel), and its
    loss covers the answer tokens only."""
    batch = encode(tokenizer, inputs, max_input)
    labels = encode_labels(tokenizer, outputs, max_output)
    return {**batch, "labels": labels, "decoder_input_ids": shift_right(labels)}


def answer_logits(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor
) -> torch.Tensor:
    """Logits (b, t, vocab) of a plain Hugging Face base (or a PEFT model around one), logits[:, t]
    predicting labels[:, t]: the TagiModel forward's convention, for the models stages train outside
    a TagiModel (stage 0's base, the teachers, the meta teacher). A T5 reads the prompt in its
    encoder; a causal model reads the prompt and then the answer as one sequence, by the very
    function CausalTagiModel.forward runs (hypernet.causal.answer_logits), so a loss over them never
    scores a prompt token."""
    if model.config.is_encoder_decoder:
        return model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    return causal_answer_logits(model, input_ids, attention_mask, decoder_input_ids)


def answer_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of a seq2seq_batch's answer tokens under a plain base (answer_logits)."""
    logits = answer_logits(model, batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])
    return cross_entropy(logits, batch["labels"])


@torch.no_grad()
def greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    inputs: list[str],
    max_input: int,
    max_new_tokens: int,
    batch_size: int = 64,
) -> list[str]:
    """Greedy outputs of a plain base. A causal model continues its prompt, so prompts are padded on
    the left (each row's last token is then the last column) and only the new tokens are decoded."""
    causal = not model.config.is_encoder_decoder
    outputs = []
    device = model.device
    for start in range(0, len(inputs), batch_size):
        texts = inputs[start : start + batch_size]
        batch = {k: v.to(device) for k, v in encode(tokenizer, texts, max_input, "left" if causal else None).items()}
        tokens = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        if causal:
            tokens = tokens[:, batch["input_ids"].shape[1] :]
        outputs += tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return outputs


def exact_match_by_group(predictions: list[str], pairs: list[Pair], groups: list[str]) -> dict[str, float]:
    """{"em": overall, "em/<group>": per group} over the given pairs."""
    hits: dict[str, list[float]] = defaultdict(list)
    for prediction, pair in zip(predictions, pairs):
        hits[groups[pair.task]].append(exact_match(prediction, pair.output))
    everything = [h for values in hits.values() for h in values]
    scores = {"em": sum(everything) / max(1, len(everything))}
    scores.update({f"em/{g}": sum(v) / len(v) for g, v in sorted(hits.items())})
    return scores


def concat_inputs(task_set: TaskSet, pairs: list[Pair], rng: random.Random | None = None) -> list[str]:
    """Instruction + input prompts. With `rng`, a task that has paraphrases shows one of its
    wordings at random (the meta teacher trains on the wordings the generator sees)."""
    texts = []
    for p in pairs:
        task = task_set.tasks[p.task]
        if rng is not None and task.paraphrases:
            instruction = label_definition(rng.choice(task.wordings))
        else:
            instruction = task_set.instructions[p.task]
        texts.append(format_concat(instruction, p.input))
    return texts


def spread(pairs: Sequence[Pair], count: int) -> list[Pair]:
    """At most `count` pairs, spread evenly over the list (so every task is represented)."""
    if count >= len(pairs):
        return list(pairs)
    step = len(pairs) / count
    return [pairs[int(i * step)] for i in range(count)]


@dataclass(frozen=True)
class BaseText:
    """A base's tokenizer and how a prompt is written for it, for the stages that train a plain base
    before any checkpoint exists (stage 0, the teachers, the meta teacher): with the input template
    the checkpoint made from this base gets (a causal base: hypernet.chat's, so its chat template or
    a closing newline that tells where the input ends; T5: the input as it is), so every model of a
    run reads a prompt the same way as TAGI does (TagiModel.format_inputs)."""

    tokenizer: PreTrainedTokenizerBase
    template: str

    @classmethod
    def of(cls, base_dir: Path) -> BaseText:
        family = read_family(base_dir)
        tokenizer = load_base_tokenizer(base_dir, family)
        return cls(tokenizer, input_template_for(tokenizer) if family.causal else CheckpointConfig.input_template)

    def prompts(self, texts: list[str]) -> list[str]:
        return [self.template.replace("{input}", text) for text in texts]


def load_base_model(model_dir: Path, device: torch.device | str = "cpu") -> PreTrainedModel:
    """A base directory of any supported family (a stage-0 base, the meta teacher) in float32 on
    `device`: T5ForConditionalGeneration or the causal LM its config.json names."""
    return load_base(model_dir, read_family(model_dir), torch.float32).to(device)


def load_frozen_base(model_dir: Path, device: torch.device | str) -> PreTrainedModel:
    """A base that only gives targets (the meta teacher in stage 3): eval mode, no gradients."""
    model = load_base_model(model_dir, device)
    model.requires_grad_(False)
    return model.eval()


TEACHER_INDEX = "index.json"
"""Stage 1's teachers/index.json: which teacher (PEFT directory) each training task has."""


def read_teacher_index(teachers_dir: Path) -> dict:
    path = Path(teachers_dir) / TEACHER_INDEX
    return json.loads(path.read_text()) if path.exists() else {}
