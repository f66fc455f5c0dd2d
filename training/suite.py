"""Planning a list-world suite: which functions and wordings go to which split, and their tasks.

Held-out splits differ from training in exactly one controlled way: a new
combination of trained primitives (``unseen_composition``), a new parameter
value (``unseen_parameter``), a new wording (``unseen_paraphrase``: a held-out
template; ``natural_wording``: everyday wordings written apart from the
templates, data/list_world/natural_wordings.jsonl) or items never seen in
training (``unseen_words``: training functions, canonical wording, inputs
drawn from real words outside the training vocabulary). Every split is
planned (as step tuples) before any instance is drawn, so the held-out ones
cannot leak into training. Tasks are SNI tasks declaring their function;
training tasks also carry many wordings of it (``Task.paraphrases``);
``training.suite_files`` writes them.

Lists are short (2-4 items by default) because a tiny model has to learn this
world on a CPU; a probe with 4-8 items failed, and a sizing run learned 2-4
clearly faster than 2-5.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from training.data import Example, Instance, Param, Task, function_key
from training.world import (
    NO,
    PRIMITIVES,
    PRIMITIVES_BY_NAME,
    UNSEEN_ITEM_WORDS,
    VOCABULARY,
    YES,
    Primitive,
    Result,
    Step,
    category_of,
    composable,
    describe_steps,
    format_list,
    format_result,
    random_input,
    run_steps,
    training_wordings,
)

SplitName = Literal["train", "unseen_composition", "unseen_parameter", "unseen_paraphrase", "natural_wording", "unseen_words"]
SPLITS: tuple[SplitName, ...] = (
    "train",
    "unseen_composition",
    "unseen_parameter",
    "unseen_paraphrase",
    "natural_wording",
    "unseen_words",
)
NATURAL_WORDINGS = Path(__file__).resolve().parents[1] / "data" / "list_world" / "natural_wordings.jsonl"
"""Everyday wordings of training functions, one JSON object per line ({"instruction", "function"}),
written without reading the training templates; no stage trains on them."""


@dataclass(frozen=True)
class SuiteConfig:
    min_items: int = 2
    max_items: int = 4
    train_instances: int = 200
    test_instances: int = 50
    positive_examples: int = 2
    # Training tasks per (primitive, parameter), each with a different canonical wording.
    paraphrases_per_function: int = 1
    # Wordings each training task carries (its definition first); training draws among them.
    wordings_per_task: int = 24
    # Share of word items in training inputs that are made-up words (training.world.novel_word),
    # so that copying any word is learned, not the vocabulary.
    novel_word_share: float = 0.15
    # Parameter values per parameterised primitive among single-step training tasks.
    values_per_primitive: int = 3
    train_compositions: int = 40
    unseen_compositions: int = 12
    unseen_values_per_primitive: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError(f"need 1 <= min_items <= max_items, got {self.min_items}, {self.max_items}")
        for name in (
            "train_instances",
            "test_instances",
            "paraphrases_per_function",
            "values_per_primitive",
            "unseen_values_per_primitive",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.wordings_per_task < 1:
            raise ValueError(f"wordings_per_task must be >= 1, got {self.wordings_per_task}")
        if not 0.0 <= self.novel_word_share < 1.0:
            raise ValueError(f"novel_word_share must be in [0, 1), got {self.novel_word_share}")
        for name in ("positive_examples", "train_compositions", "unseen_compositions"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class SynthTask:
    """An SNI task plus the steps that define it, kept for checking and reporting."""

    task: Task
    split: SplitName
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Suite:
    seed: int
    config: SuiteConfig
    train: tuple[SynthTask, ...]
    unseen_composition: tuple[SynthTask, ...]
    unseen_parameter: tuple[SynthTask, ...]
    unseen_paraphrase: tuple[SynthTask, ...]
    natural_wording: tuple[SynthTask, ...]
    unseen_words: tuple[SynthTask, ...]

    def splits(self) -> dict[SplitName, tuple[SynthTask, ...]]:
        return {name: getattr(self, name) for name in SPLITS}


_MAX_SAMPLE_TRIES = 100
# Candidates drawn per positive example shown, to pick examples with varied answers.
_SHOWN_CANDIDATES = 5
_PROBE_INPUTS = 64
# A composition whose most common answer exceeds this share mostly teaches a
# constant (e.g. "first 3 items, then count" is nearly always 3).
_MAX_MAJORITY_SHARE = 0.6
# Each step of a composition must change the answer on at least this share of
# inputs, or the task is one primitive in disguise (e.g. "reverse, then sum").
_MIN_STEP_EFFECT = 0.25


@dataclass(frozen=True)
class ItemSource:
    """Where a split's word items come from: the training vocabulary (with a share of made-up
    words in training), or real words no stage trained on (``unseen_words``)."""

    words: Sequence[str] = VOCABULARY
    novel_share: float = 0.0
    words_only: bool = False


def item_source(split: SplitName, config: SuiteConfig) -> ItemSource:
    if split == "train":
        return ItemSource(novel_share=config.novel_word_share)
    if split == "unseen_words":
        return ItemSource(words=UNSEEN_ITEM_WORDS, words_only=True)
    return ItemSource()


def sample_instance(rng: random.Random, steps: Sequence[Step], config: SuiteConfig) -> tuple[str, str]:
    """A fresh (input, output) text pair of the function, drawn like a training task's instances."""
    source = item_source("train", config)
    items = random_input(rng, steps, config.min_items, config.max_items, source.words, source.novel_share, source.words_only)
    return format_list(items), format_result(run_steps(steps, items))


def _is_informative(rng: random.Random, pair: tuple[Step, Step], config: SuiteConfig) -> bool:
    """Judge a composition on probe inputs: answers must vary and both steps must matter.

    Probes are drawn like real instances (yes/no answers balanced when
    possible), so the verdict reflects the data the task would actually get.
    """
    probes = _sample_examples(rng, pair, _PROBE_INPUTS, config, taken=set())
    inputs = [items for items, _ in probes]
    outputs = [format_result(result) for _, result in probes]
    if Counter(outputs).most_common(1)[0][1] > _MAX_MAJORITY_SHARE * _PROBE_INPUTS:
        return False
    for alone in pair:
        changed = sum(format_result(run_steps([alone], x)) != out for x, out in zip(inputs, outputs))
        if changed < _MIN_STEP_EFFECT * _PROBE_INPUTS:
            return False
    return True


def _sample_examples(
    rng: random.Random,
    steps: Sequence[Step],
    count: int,
    config: SuiteConfig,
    taken: set[str],
    source: ItemSource = ItemSource(),
) -> list[tuple[list[str], Result]]:
    """Distinct inputs (not in ``taken``) with their results.

    Yes/no tasks alternate their target answer so that both answers are
    equally common and "always yes" scores only half.
    """
    balance = PRIMITIVES_BY_NAME[steps[-1].primitive].output == "yesno"
    examples = []
    for index in range(count):
        target = (YES, NO)[index % 2] if balance else None
        chosen = None
        for _ in range(_MAX_SAMPLE_TRIES):
            items = random_input(
                rng, steps, config.min_items, config.max_items, source.words, source.novel_share, source.words_only
            )
            if format_list(items) in taken:
                continue
            result = run_steps(steps, items)
            if chosen is None or result == target:
                chosen = (items, result)
            if target is None or result == target:
                break
        if chosen is None:
            raise RuntimeError(f"could not sample {count} distinct inputs for {describe_steps(steps)!r}")
        taken.add(format_list(chosen[0]))
        examples.append(chosen)
    return examples


def _varied(examples: list[tuple[list[str], Result]], count: int) -> list[tuple[list[str], Result]]:
    """Prefer examples with different answers: two "none" examples teach nothing."""
    seen: set[str] = set()
    first_of_each = []
    for example in examples:
        answer = format_result(example[1])
        if answer not in seen:
            seen.add(answer)
            first_of_each.append(example)
    rest = [e for e in examples if e not in first_of_each]
    return (first_of_each + rest)[:count]


def _explain(steps: Sequence[Step], items: list[str]) -> str:
    text = format_list(items)
    if len(steps) == 1:
        return f'Applying the instruction to "{text}" gives "{format_result(run_steps(steps, items))}".'
    middle = format_result(run_steps(steps[:1], items))
    final = format_result(run_steps(steps, items))
    return f'The first step turns "{text}" into "{middle}", and the second step turns that into "{final}".'


def _make_task(
    name: str,
    split: SplitName,
    steps: tuple[Step, ...],
    instances: int,
    seed: int,
    config: SuiteConfig,
    wording: str | None = None,
) -> SynthTask:
    """A task of the function `steps`; its definition is `wording` or the canonical one, and a
    training task also carries up to `config.wordings_per_task` wordings of its function."""
    rng = random.Random(f"{seed}:{name}")
    taken: set[str] = set()
    source = item_source(split, config)
    pairs = _sample_examples(rng, steps, instances, config, taken, source)
    candidates = _sample_examples(rng, steps, _SHOWN_CANDIDATES * config.positive_examples, config, taken, source)
    shown = _varied(candidates, config.positive_examples)
    definition = wording or describe_steps(steps)
    paraphrases: tuple[str, ...] = ()
    if split == "train":
        wordings = training_wordings(steps, random.Random(f"{seed}:{name}:wordings"), config.wordings_per_task)
        paraphrases = tuple(w for w in wordings if w != definition)
    task = Task(
        name=name,
        definition=definition,
        positive_examples=tuple(
            Example(format_list(items), format_result(result), _explain(steps, items)) for items, result in shown
        ),
        negative_examples=(),
        instances=tuple(
            Instance(f"{name}-{i:04d}", format_list(items), (format_result(result),)) for i, (items, result) in enumerate(pairs)
        ),
        categories=(category_of(steps),),
        function=tuple(s.function for s in steps),
        paraphrases=paraphrases,
    )
    return SynthTask(task=task, split=split, steps=steps)


# Step tuples per split, decided before any instance is generated.
_Plan = dict[SplitName, list[tuple[Step, ...]]]


def _composition_step(rng: random.Random, primitive: Primitive) -> Step:
    """A step of a composition, in its primitive's canonical wording (template 0): its task's
    definition chains two plain imperatives; the framed variants are its paraphrases."""
    return Step(primitive.name, primitive.sample_param(rng), 0)


def _informative_pair(rng: random.Random, pair: tuple[str, str], config: SuiteConfig, tries: int = 4) -> tuple[Step, Step] | None:
    """Training-parameter steps for ``pair`` that make an informative task, if found."""
    first, second = (PRIMITIVES_BY_NAME[name] for name in pair)
    for _ in range(tries):
        steps = (_composition_step(rng, first), _composition_step(rng, second))
        if _is_informative(rng, steps, config):
            return steps
    return None


def _plan_singles(rng: random.Random, config: SuiteConfig, plan: _Plan) -> None:
    """Single-step train, unseen-parameter and unseen-paraphrase tasks.

    An unseen-paraphrase task reuses a function trained as a single step, so
    only its wording is new.
    """
    for primitive in PRIMITIVES:
        if primitive.param_name is None:
            values: list[Param] = [None]
        else:
            count = min(config.values_per_primitive, len(primitive.train_values))
            values = sorted(rng.sample(primitive.train_values, count), key=str)
        templates = list(primitive.train_templates)
        for value in values:
            for template in rng.sample(templates, min(config.paraphrases_per_function, len(templates))):
                plan["train"].append((Step(primitive.name, value, template),))
        for value in primitive.held_out_values[: config.unseen_values_per_primitive]:
            step = Step(primitive.name, value, rng.choice(primitive.train_templates))
            plan["unseen_parameter"].append((step,))
        step = Step(primitive.name, rng.choice(values), primitive.held_out_template)
        plan["unseen_paraphrase"].append((step,))


def _plan_compositions(rng: random.Random, config: SuiteConfig, plan: _Plan) -> None:
    """Held-out pairs first, then training pairs that avoid them in either order.

    Only informative pairs are used, and held-out pairs are chosen so that
    each of their primitives keeps a training pair in the same role (first or
    second), which the training picks then cover: a held-out pair always
    combines roles seen in training, just never together.
    """
    informative: dict[tuple[str, str], tuple[Step, Step]] = {}
    for a in PRIMITIVES:
        for b in PRIMITIVES:
            steps = _informative_pair(rng, (a.name, b.name), config) if composable(a, b) else None
            if steps is not None:
                informative[(a.name, b.name)] = steps
    pairs = list(informative)
    rng.shuffle(pairs)

    held: list[tuple[str, str]] = []
    for pair in pairs:
        if len(held) == config.unseen_compositions:
            break
        if frozenset(pair) not in map(frozenset, held) and _roles_survive(pairs, [*held, pair]):
            held.append(pair)
    plan["unseen_composition"].extend(informative[pair] for pair in held)

    held_keys = {frozenset(p) for p in held}
    candidates = [p for p in pairs if frozenset(p) not in held_keys]
    chosen: list[tuple[str, str]] = []
    covered: set[tuple[int, str]] = set()
    for pair in candidates:  # first every role, then the rest in shuffled order
        roles = {(0, pair[0]), (1, pair[1])}
        if not roles <= covered:
            chosen.append(pair)
            covered |= roles
    chosen += [p for p in candidates if p not in chosen]
    plan["train"].extend(informative[pair] for pair in chosen[: config.train_compositions])


def _roles_survive(pairs: Sequence[tuple[str, str]], held: Sequence[tuple[str, str]]) -> bool:
    """Whether every held-out pair's primitives still appear in their roles among the rest."""
    held_keys = {frozenset(p) for p in held}
    remaining = [p for p in pairs if frozenset(p) not in held_keys]
    firsts, seconds = {p[0] for p in remaining}, {p[1] for p in remaining}
    return all(a in firsts and b in seconds for a, b in held)


def read_natural_wordings(path: Path = NATURAL_WORDINGS) -> list[tuple[tuple[Step, ...], str]]:
    """(steps, wording) per line of the everyday-wordings file; a malformed line is an error that
    names it (the file is data anyone may extend)."""
    result = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
            wording, function = record["instruction"], record["function"]
            steps = tuple(Step(name, param, 0) for name, param in function)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: not an {{instruction, function}} record: {err}") from err
        for step in steps:
            primitive = PRIMITIVES_BY_NAME.get(step.primitive)
            if primitive is None or (step.param is None) != (primitive.param_name is None):
                raise ValueError(f"{where}: {step.primitive!r} with parameter {step.param!r} is not a list-world step")
        if not isinstance(wording, str) or not wording.strip() or not 1 <= len(steps) <= 2:
            raise ValueError(f"{where}: needs a non-empty instruction and one or two steps")
        result.append((steps, wording))
    return result


def _plan_unseen_words(plan: _Plan) -> None:
    """Training single-step functions that read words, again with real words never trained on."""
    for (step,) in (steps for steps in plan["train"] if len(steps) == 1):
        if "word" in PRIMITIVES_BY_NAME[step.primitive].domain:
            plan["unseen_words"].append((Step(step.primitive, step.param, 0),))


def build_suite(seed: int, config: SuiteConfig = SuiteConfig(), natural_wordings: Path = NATURAL_WORDINGS) -> Suite:
    """Deterministic suite: the same seed, config and wordings file give identical tasks."""
    rng = random.Random(seed)
    plan: _Plan = {split: [] for split in SPLITS}
    _plan_singles(rng, config, plan)
    _plan_compositions(rng, config, plan)
    _plan_unseen_words(plan)
    natural = read_natural_wordings(natural_wordings)
    plan["natural_wording"] = [steps for steps, _ in natural]
    wording_of = {("natural_wording", i): text for i, (_, text) in enumerate(natural)}
    built: dict[SplitName, tuple[SynthTask, ...]] = {}
    for split, step_lists in plan.items():
        instances = config.train_instances if split == "train" else config.test_instances
        built[split] = tuple(
            _make_task(
                f"synth_{split}_{i:03d}_" + function_key([s.function for s in steps]),
                split,
                steps,
                instances,
                seed,
                config,
                wording_of.get((split, i)),
            )
            for i, steps in enumerate(step_lists)
        )
    return Suite(seed=seed, config=config, **built)


def corpus_texts(suite: Suite, include_held_out: bool = False) -> list[str]:
    """Definitions, inputs and outputs, deduplicated in first-seen order.

    Held-out splits are excluded by default: pretraining on their definitions
    would leak the unseen paraphrase templates and compositions.
    """
    splits = SPLITS if include_held_out else ("train",)
    texts: dict[str, None] = {}
    for split in splits:
        for synth in suite.splits()[split]:
            task = synth.task
            texts.update(dict.fromkeys(task.wordings))
            for example in task.positive_examples:
                texts[example.input] = None
                texts[example.output] = None
            for instance in task.instances:
                texts[instance.input] = None
                texts.update(dict.fromkeys(instance.outputs))
    return list(texts)
