"""Stage 0: a tiny base from scratch (T5, or a decoder-only family), so the default checkpoint is
self-contained.

Real users skip this and point at t5-lm-adapt or flan-t5. The base sees only training tasks
(never a held-out task, never a held-back instance) and never an instruction:
- span corruption (T5's objective, with sentinel tokens) on a corpus of the training tasks'
  inputs, outputs and definitions;
- instruction-free skills. A random base cannot be steered by a rank-8 q/v update
  (probe-notes), and a base that reads instructions would be the teacher, so the base
  learns the operations without words:
  - "world" (the tiny preset): fresh list-world examples of the training functions, named
    by opaque primitive symbols (WorldSkills); a share is shown without symbols, so input
    alone means "some operation", and choosing it is left to the adapter;
  - "unconditioned": the training pairs with no hint of the task (a mixture only; works
    for any task files, e.g. SNI).

The tokenizer is SentencePiece unigram with T5's ids plus sentinel pieces `<extra_id_N>`
(hypernet.tiny's builder has none, and span corruption needs them) and the skill symbols.

A causal base (`base.family` llama, qwen2, ...; hypernet.tiny_causal, byte-level BPE trained on the
same texts) learns the same things by next-token prediction: instead of span corruption, a cut text
is continued (the loss on the continuation only), and the skills are prompt -> answer pairs in the
input template its checkpoint will have (training.common.BaseText), so the base already reads an
input the way TAGI later writes it.

Entry point: `run(recipe, inputs, out)` (the stage table, training.stages); writes out/model.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hypernet.files import SPIECE, atomic_directory, write_json
from hypernet.tiny import build_tiny_base
from hypernet.tiny_causal import build_tiny_causal_base
from training.common import BaseText, TaskSet, answer_loss, exact_match_by_group, greedy, load_base_model, seq2seq_batch, spread
from training.data import format_concat, label_definition
from training.distributed import barrier, is_main
from training.loop import LoopConfig, LoopResult, resolve_device, seed_everything, train
from training.presets import BaseConfig
from training.suite import SuiteConfig, sample_instance
from training.world import ITEM_SEPARATOR, PRIMITIVES, PRIMITIVES_BY_NAME, VOCABULARY, Step, steps_of

if TYPE_CHECKING:
    from training.presets import Preset
    from training.stages import StageInputs

SENTINELS = 20
SKILL_CODES = 32
PRIMITIVE_INDEX = {p.name: i for i, p in enumerate(PRIMITIVES)}
BASE_CARD = "base_card.json"


def sentinel(i: int) -> str:
    return f"<extra_id_{i}>"


def skill_code(i: int) -> str:
    """An opaque symbol naming a list-world primitive: no words, so no instruction."""
    return f"<skill_{i}>"


def tokenizer_corpus(task_set: TaskSet) -> list[str]:
    """Texts of the training tasks only; definitions weighted so their words become pieces."""
    texts: dict[str, None] = {}
    for task, instruction in zip(task_set.tasks, task_set.instructions):
        texts[instruction] = None
        texts[format_concat(instruction, task.instances[0].input)] = None
        for example in task.positive_examples:
            texts[example.input] = None
            texts[example.output] = None
    for pair in task_set.train:
        texts[pair.input] = None
        texts[pair.output] = None
    corpus = list(texts)
    # Every word of the prompts and every item of the inputs also as a sentence of its own:
    # inside whole prompts, SentencePiece's unigram trainer kept splitting frequent words
    # ("Re tur n") however often the prompts were repeated; standalone copies make each one
    # piece, so a tiny model reads an instruction in ~15 tokens instead of ~40.
    # Every wording the meta teacher may read; made-up items (training.world.novel_word) stay
    # out of the standalone copies, so they are read in sub-word pieces like any unseen word.
    prompts = [format_concat(label_definition(w), "x") for task in task_set.tasks for w in task.wordings]
    words = sorted({w for text in prompts for w in re.findall(r"\w+|[^\w\s]", text)})
    items = sorted({w for p in task_set.train for w in p.input.split(ITEM_SEPARATOR) if w in VOCABULARY or w.isdigit()})
    corpus += prompts * 20 + (words + items) * 50
    return corpus


class WorldSkills:
    """Coded list-world examples of the training tasks' functions, drawn fresh every time.

    Each primitive has an opaque symbol (no words, so no instruction); a step is its symbol
    followed by its parameter, and a composition is its steps in order: "<skill_3> 1
    <skill_11> : apple, pear". The base thus learns every training operation exactly and
    composing steps as a skill, instead of an ambiguous mixture it could never be steered
    out of. Inputs are drawn fresh (a tiny model memorises a few hundred instances per task
    long before it learns the operation), never equal to a held-back instance, and step
    parameters are redrawn from the primitive's training values only: held-out parameter
    values, paraphrases and compositions never reach this stage.
    """

    def __init__(self, task_set: TaskSet, world: SuiteConfig):
        self.functions = [steps_of(t) for t in task_set.tasks]
        self.world = world
        self.excluded = {p.input for p in task_set.held_back}

    @staticmethod
    def prefix(steps: tuple[Step, ...]) -> str:
        parts = [skill_code(PRIMITIVE_INDEX[s.primitive]) + ("" if s.param is None else f" {s.param}") for s in steps]
        return " ".join(parts) + " :"

    def coded(self, task: int, input_text: str) -> str:
        return f"{self.prefix(self.functions[task])} {input_text}"

    def sample(self, rng: random.Random, task: int) -> tuple[str, str]:
        steps = tuple(
            Step(s.primitive, None if s.param is None else rng.choice(PRIMITIVES_BY_NAME[s.primitive].train_values), 0)
            for s in self.functions[task]
        )
        while True:
            source, target = sample_instance(rng, steps, self.world)
            if source not in self.excluded:
                return f"{self.prefix(steps)} {source}", target


def build_base(task_set: TaskSet, out_dir: Path, config: BaseConfig, seed: int) -> None:
    """Tokenizer (with sentinel and skill-code pieces) + randomly initialised base, as an HF
    directory. A causal base's BPE has no sentinels (it never sees span corruption) and no symbols
    of its own: the skill codes are in its texts often enough to become single tokens."""
    seed_everything(seed)
    codes = tuple(skill_code(i) for i in range(SKILL_CODES))
    if config.family != "t5":
        texts = tokenizer_corpus(task_set) + [" ".join(codes)] * 50
        build_tiny_causal_base(texts, out_dir, config.family, config.causal_model, seed=seed)
        return
    symbols = tuple(sentinel(i) for i in range(SENTINELS)) + codes
    build_tiny_base(tokenizer_corpus(task_set), out_dir, config.model, seed=seed, symbols=symbols)


def span_corrupt(tokens: list[str], rng: random.Random, density: float, mean_span: float) -> tuple[str, str]:
    """T5 span corruption on whitespace words: masked spans -> sentinels in the input,
    the target lists each sentinel followed by the words it hid."""
    n = len(tokens)
    masked = max(1, round(n * density))
    spans = max(1, round(masked / mean_span))
    inp, out, i, k = [], [], 0, 0
    starts = sorted(rng.sample(range(n), min(spans, n)))
    span_len = max(1, masked // len(starts))
    covered = set()
    for s in starts:
        covered.update(range(s, min(n, s + span_len)))
    while i < n:
        if i in covered and k < SENTINELS:
            inp.append(sentinel(k))
            out.append(sentinel(k))
            while i < n and i in covered:
                out.append(tokens[i])
                i += 1
            k += 1
        else:
            inp.append(tokens[i])
            i += 1
    return " ".join(inp), " ".join(out)


def continuation(tokens: list[str], rng: random.Random) -> tuple[str, str]:
    """A causal base's counterpart of span corruption: the words cut at a random point, the
    prompt the start, the answer the rest (next-token prediction on the rest)."""
    cut = rng.randrange(1, len(tokens)) if len(tokens) > 1 else 1
    return " ".join(tokens[:cut]), " ".join(tokens[cut:])


def pretrain_base(
    task_set: TaskSet,
    out_dir: Path,
    config: BaseConfig,
    loop: LoopConfig,
    seed: int,
    world_config: SuiteConfig,
    resume: bool = True,
) -> Path:
    """Build (once) and train the base in `out_dir`; returns the HF directory of the result.
    `world_config` shapes skills="world" inputs like the suite's (list lengths)."""
    out_dir = Path(out_dir)
    init_dir = out_dir / "init"
    if is_main() and not (init_dir / "config.json").exists():
        build_base(task_set, init_dir, config, seed)
    barrier()
    text = BaseText.of(init_dir)
    causal = config.family != "t5"
    seed_everything(loop.seed)
    model = load_base_model(init_dir, resolve_device(loop.device))

    # Span-corruption documents: a few training texts joined, like sentences of a paragraph.
    span_texts = [*task_set.instructions, *(p.input for p in task_set.train), *(p.output for p in task_set.train)]
    skills = task_set.train if config.skills in ("unconditioned", "world") else []
    world = WorldSkills(task_set, world_config) if config.skills == "world" else None
    total = len(skills) or len(span_texts)  # an epoch = one pass over the skill pairs

    def make_batch(indices: list[int], batch_seed: int) -> dict:
        rng = random.Random(batch_seed)
        inputs, outputs = [], []
        for index in indices:
            use_span = not skills or rng.random() < config.span_fraction
            if use_span:
                words = " ".join(rng.choice(span_texts) for _ in range(3)).split()
                if causal:
                    source, target = continuation(words, rng)
                else:
                    source, target = span_corrupt(words, rng, config.noise_density, config.mean_span)
            else:
                pair = skills[index]  # the training set's task mix
                source, target = pair.input, pair.output
                if world is not None and rng.random() >= config.unconditioned_share:
                    source, target = world.sample(rng, pair.task)
                source = text.prompts([source])[0]
            inputs.append(source)
            outputs.append(target)
        return seq2seq_batch(text.tokenizer, inputs, outputs, config.max_input_tokens, config.max_output_tokens)

    def loss_fn(batch: dict) -> tuple[torch.Tensor, dict]:
        return answer_loss(model, batch), {}

    # How well the base does each coded operation on held-back instances shows early whether
    # it will be worth steering (per-primitive exact match in log.jsonl).
    probe = spread(task_set.held_back, config.eval_instances) if world is not None else []

    def evaluate(_step: int) -> dict:
        inputs = text.prompts([world.coded(p.task, p.input) for p in probe])
        predictions = greedy(model, text.tokenizer, inputs, config.max_input_tokens, config.max_output_tokens)
        return exact_match_by_group(predictions, probe, task_set.categories())

    result = train(
        model,
        total,
        make_batch,
        loss_fn,
        loop,
        out_dir,
        name="stage0-base",
        resume=resume,
        eval_fn=evaluate if probe else None,
        settings={"base": config, "seed": seed, "world": world_config},
    )
    final = out_dir / "model"
    if not is_main():
        return final
    with atomic_directory(final, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        text.tokenizer.save_pretrained(tmp)
        if (init_dir / SPIECE).exists():  # a T5 tokenizer's SentencePiece model
            (tmp / SPIECE).write_bytes((init_dir / SPIECE).read_bytes())
        write_base_card(tmp, result, config, loop, task_set, span_texts, skills, world, evaluate if probe else None)
    return final


def write_base_card(
    model_dir: Path,
    result: LoopResult,
    config: BaseConfig,
    loop: LoopConfig,
    task_set: TaskSet,
    span_texts: list[str],
    skills: list,
    world: WorldSkills | None,
    evaluate: Callable[[int], dict] | None,
) -> None:
    """base_card.json: what the base saw (never an instruction as a condition) and how well it does."""
    write_json(
        model_dir / BASE_CARD,
        {
            "stage": "base_pretrain",
            "saw": {
                "span_corruption_texts": len(span_texts),
                "skill_pairs": len(skills),
                "skills": config.skills,
                "skill_codes": {p.name: skill_code(i) for i, p in enumerate(PRIMITIVES)} if world is not None else {},
                "instructions_as_input": False,
                "tasks": [t.name for t in task_set.tasks],
                "held_back_instances_per_task_excluded": True,
            },
            "config": asdict(config) | {"loop": asdict(loop)},
            "steps": result.steps_done,
            "seconds": round(result.seconds, 1),
            # The loop scored the last step; a resumed, already finished run did not.
            "final_eval": result.last_eval or (evaluate(result.steps_done) if evaluate is not None else {}),
        },
    )


def run(recipe: Preset, inputs: StageInputs, out: Path) -> None:
    """Stage 0 from the training tasks alone; writes out/model, the base every later stage uses."""
    from training.stages import stage_loop

    pretrain_base(
        inputs.task_set,
        out,
        recipe.base,
        stage_loop(recipe, "base.loop", inputs.device),
        recipe.seed,
        recipe.suite,
        resume=inputs.resume,
    )


def read_base_card(base_dir: Path) -> dict:
    path = Path(base_dir) / BASE_CARD
    return json.loads(path.read_text()) if path.exists() else {}
