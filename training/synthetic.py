"""The "list world": a synthetic instruction suite with controlled held-out splits.

Real SNI tasks are too few and too varied to tell whether a hypernetwork
generalises from instructions; here every task is a known function of a short
list, so held-out tasks can be built that differ from training in exactly one
controlled way (a new combination, a new parameter value, or a new wording),
and correctness of every reference output is checkable.

Tasks are written in the SNI file format so :mod:`training.data` reads them
like any other task. Lists are short (2-4 items by default) because a tiny
model has to learn this world on a CPU; a probe with 4-8 items failed, and a
sizing run learned 2-4 clearly faster than 2-5. Every primitive is about
positions, equality or the order of numbers: operations that need per-word
spelling knowledge (uppercase, alphabetical order, initial letters) or
multi-token arithmetic (sum) cost a tiny model most of its budget (see the
model card, checkpoints/tiny/README.md) and are left out.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from training.data import Example, Instance, Task, task_to_dict

# --------------------------------------------------------------------------
# Items and their textual form

ITEM_SEPARATOR = ", "
EMPTY_LIST = "none"
YES, NO = "yes", "no"
MAX_NUMBER = 99

# Concrete nouns and simple adjectives, one lowercase word each. Articles,
# "yes", "no" and "none" are deliberately absent: the first are stripped by
# SNI answer normalisation and the others are reserved output words.
VOCABULARY: tuple[str, ...] = tuple(
    """
    apple acorn amber anchor ant arrow attic
    banana basket bean bell berry blue boat book bottle bread brick bridge brown bucket butter button
    cactus camel candle carrot castle chair cherry clock cloud coin cookie copper cotton crayon crown cup
    daisy dark desk diamond dolphin door dove dragon drum duck dusty
    eagle egg elbow emerald engine envelope
    feather fence fern flag flower forest fork fox fresh frog
    garden garlic gate ghost giant glass glove goat grape green guitar
    hammer harbor hat heavy helmet hill hollow honey horse house
    icy igloo iron island ivory
    jacket jar jelly jungle juicy
    kettle key kite kitten knife
    ladder lake lamp lantern leaf lemon lion lizard log lucky
    magnet mango maple marble meadow melon mirror mitten monkey moon mountain muddy
    napkin narrow needle nest net nickel noodle
    oak ocean olive onion orange otter oven owl
    paper parrot peach pear pebble pencil pepper piano pillow pine plum pocket pumpkin purple
    queen quiet quilt
    rabbit radio rainbow raven ribbon river robot rocket rose round ruby
    saddle salt sand shell shovel silver snail sock spoon star stone sugar sunny swan
    table teapot tent thumb tiger tiny tomato towel tower tractor train tree tulip turtle
    umbrella
    valley vase velvet village violet violin
    wagon wallet walnut water whale wheel wide window wolf wooden
    yacht yarn yellow yogurt young
    zebra zinc zipper
    """.split()
)

Kind = Literal["word", "number"]
WORDS: frozenset[Kind] = frozenset({"word"})
NUMBERS: frozenset[Kind] = frozenset({"number"})
ANY: frozenset[Kind] = frozenset({"word", "number"})

Param = int | str | None
Result = list[str] | str


def format_list(items: Sequence[str]) -> str:
    return ITEM_SEPARATOR.join(items) if items else EMPTY_LIST


def parse_list(text: str) -> list[str]:
    return [] if text == EMPTY_LIST else text.split(ITEM_SEPARATOR)


def format_result(result: Result) -> str:
    return result if isinstance(result, str) else format_list(result)


# --------------------------------------------------------------------------
# Primitives


@dataclass(frozen=True)
class Primitive:
    """One list operation with its paraphrases and parameter space.

    Each primitive has at most one parameter (``param_name``), whose values are
    split into ``train_values`` and disjoint ``held_out_values`` up front so the
    unseen-parameter split cannot leak. The last template is never used in
    training: it is the unseen-paraphrase template.
    """

    name: str
    domain: frozenset[Kind]
    output: Literal["list", "number", "yesno"]
    fn: Callable[[list[str], Param], Result]
    templates: tuple[str, ...]
    param_name: str | None = None
    train_values: tuple[int | str, ...] = ()
    held_out_values: tuple[int | str, ...] = ()
    # Nudges a random input so the operation has something to do (e.g. plant X).
    enrich: Callable[[list[str], Param, random.Random], list[str]] | None = None

    @property
    def train_templates(self) -> range:
        return range(len(self.templates) - 1)

    @property
    def held_out_template(self) -> int:
        return len(self.templates) - 1

    def sample_param(self, rng: random.Random) -> Param:
        """A training value; held-out values are only ever placed deliberately."""
        return None if self.param_name is None else rng.choice(self.train_values)

    def apply(self, items: Sequence[str], param: Param) -> Result:
        if (param is None) != (self.param_name is None):
            raise ValueError(f"{self.name}: parameter {self.param_name!r} given as {param!r}")
        return self.fn(list(items), param)

    def describe(self, param: Param, template_index: int) -> str:
        template = self.templates[template_index]
        if self.param_name is None:
            return template
        # "{items}" lets count templates read "the first 1 item", not "1 items".
        return template.format(**{self.param_name: param, "items": "item" if param == 1 else "items"})


def _yes_no(flag: bool) -> str:
    return YES if flag else NO


def _max(items: list[str], _: Param) -> str:
    return str(max(map(int, items))) if items else EMPTY_LIST


def _min(items: list[str], _: Param) -> str:
    return str(min(map(int, items))) if items else EMPTY_LIST


def _is_ascending(items: list[str], _: Param) -> str:
    numbers = [int(i) for i in items]
    return _yes_no(all(a <= b for a, b in zip(numbers, numbers[1:])))


def _plant_duplicate(items: list[str], _: Param, rng: random.Random) -> list[str]:
    if len(items) >= 2 and rng.random() < 0.6:
        source, target = rng.sample(range(len(items)), 2)
        items[target] = items[source]
    return items


def _plant_word(items: list[str], word: Param, rng: random.Random) -> list[str]:
    if rng.random() < 0.5:
        items[rng.randrange(len(items))] = str(word)
    return items


def _maybe_sort(items: list[str], _: Param, rng: random.Random) -> list[str]:
    return sorted(items, key=int) if rng.random() < 0.5 else items


HELD_OUT_WORDS = ("tiger", "lemon", "violin", "kettle", "anchor", "pebble")

PRIMITIVES: tuple[Primitive, ...] = (
    Primitive(
        "reverse", ANY, "list", lambda xs, _: xs[::-1],
        (
            "Reverse the order of the items in the list.",
            "Write the list backwards.",
            "Output the items of the list from last to first.",
            "Return the list in reverse order.",
            "Flip the list so that the last item comes first.",
        ),
    ),
    Primitive(
        "sort_asc", NUMBERS, "list", lambda xs, _: sorted(xs, key=int),
        (
            "Sort the numbers from smallest to largest.",
            "Arrange the numbers in ascending order.",
            "Put the numbers in increasing order.",
            "Order the list so that no number is smaller than the one before it.",
            "List the numbers from lowest to highest.",
        ),
    ),
    Primitive(
        "sort_desc", NUMBERS, "list", lambda xs, _: sorted(xs, key=int, reverse=True),
        (
            "Sort the numbers from largest to smallest.",
            "Arrange the numbers in descending order.",
            "Put the numbers in decreasing order.",
            "Order the list so that no number is bigger than the one before it.",
            "List the numbers from highest to lowest.",
        ),
    ),
    Primitive(
        "first_k", ANY, "list", lambda xs, k: xs[:k],
        (
            "Keep only the first {k} {items} of the list.",
            "Take the first {k} {items}.",
            "Output the {k} {items} at the start of the list.",
            "Return the opening {k} {items} of the list.",
            "Write down the first {k} {items} of the list and drop the rest.",
        ),
        param_name="k", train_values=(1, 3), held_out_values=(2,),
    ),
    Primitive(
        "last_k", ANY, "list", lambda xs, k: xs[-k:],
        (
            "Keep only the last {k} {items} of the list.",
            "Take the final {k} {items}.",
            "Output the {k} {items} at the end of the list.",
            "Return the closing {k} {items} of the list.",
            "Write down the last {k} {items} of the list and drop the rest.",
        ),
        param_name="k", train_values=(1, 3), held_out_values=(2,),
    ),
    Primitive(
        "drop_first_k", ANY, "list", lambda xs, k: xs[k:],
        (
            "Remove the first {k} {items} from the list.",
            "Drop the first {k} {items} and keep the rest.",
            "Skip the first {k} {items} of the list.",
            "Delete the {k} {items} at the start of the list.",
            "Output everything after the first {k} {items}.",
        ),
        # Held-out k is interpolated (1 and 3 are seen), for every k primitive:
        # k = 4 on lists of at most 4 items would leave nothing to check.
        param_name="k", train_values=(1, 3), held_out_values=(2,),
    ),
    Primitive(
        "every_second", ANY, "list", lambda xs, _: xs[::2],
        (
            "Keep every second item, starting with the first one.",
            "Take the first, third, fifth and so on items of the list.",
            "Keep the items in odd positions.",
            "Remove every second item, starting from the second one.",
            "Keep the first item and then every other item after it.",
        ),
    ),
    Primitive(
        "dedupe", ANY, "list", lambda xs, _: list(dict.fromkeys(xs)),
        (
            "Remove duplicate items, keeping the first occurrence of each.",
            "Delete repeated items so that each item appears only once.",
            "Keep only the first copy of every item.",
            "Drop any item that already appeared earlier in the list.",
            "Write the list without repeats, in the original order.",
        ),
        enrich=_plant_duplicate,
    ),
    Primitive(
        "count", ANY, "number", lambda xs, _: str(len(xs)),
        (
            "Count the items in the list.",
            "Give the number of items in the list.",
            "Report how many items the list has.",
            "Output the length of the list.",
            "Write how many entries there are in the list.",
        ),
    ),
    Primitive(
        "max", NUMBERS, "number", _max,
        (
            "Find the largest number in the list.",
            "Output the maximum value.",
            "Return the biggest number.",
            "Give the highest number in the list.",
            "Write the greatest of the numbers.",
        ),
    ),
    Primitive(
        "min", NUMBERS, "number", _min,
        (
            "Find the smallest number in the list.",
            "Output the minimum value.",
            "Return the lowest number.",
            "Give the least number in the list.",
            "Pick out the tiniest of the numbers.",
        ),
    ),
    Primitive(
        "above", NUMBERS, "list", lambda xs, n: [x for x in xs if int(x) > int(n)],
        (
            "Keep only the numbers greater than {n}.",
            "Select the numbers above {n}.",
            "Remove every number that is {n} or less.",
            "Output the numbers that are bigger than {n}.",
            "Filter the list down to numbers exceeding {n}.",
        ),
        param_name="n", train_values=(25, 50, 75), held_out_values=(40, 60),
    ),
    Primitive(
        "contains", WORDS, "yesno", lambda xs, word: _yes_no(word in xs),
        (
            "Answer yes if the list contains {x}, otherwise answer no.",
            "Say yes if {x} is in the list and no if it is not.",
            "Check whether {x} appears in the list and answer yes or no.",
            "Tell with yes or no whether the word {x} is one of the items.",
            "Reply yes when {x} occurs in the list, else reply no.",
        ),
        param_name="x",
        train_values=tuple(w for w in VOCABULARY if w not in HELD_OUT_WORDS),
        held_out_values=HELD_OUT_WORDS, enrich=_plant_word,
    ),
    Primitive(
        "is_sorted", NUMBERS, "yesno", _is_ascending,
        (
            "Answer yes if the numbers are in ascending order, otherwise answer no.",
            "Say yes if the list is sorted from smallest to largest and no if it is not.",
            "Check whether the numbers never decrease and answer yes or no.",
            "Tell with yes or no whether the list is already in increasing order.",
            "Reply yes when each number is at least the one before it, else reply no.",
        ),
        enrich=_maybe_sort,
    ),
)
PRIMITIVES_BY_NAME: dict[str, Primitive] = {p.name: p for p in PRIMITIVES}

def composable(first: Primitive, second: Primitive) -> bool:
    """Whether "first, then second" can run: a list handed on to a step that reads it.

    Whether the pair is worth learning depends on parameters too, so that is
    judged on sampled inputs (see ``_is_informative``).
    """
    return first.name != second.name and first.output == "list" and bool(first.domain & second.domain)


# --------------------------------------------------------------------------
# Task functions


@dataclass(frozen=True)
class Step:
    primitive: str
    param: Param
    template: int

    @property
    def function(self) -> tuple[str, Param]:
        return (self.primitive, self.param)

    @property
    def slug(self) -> str:
        return self.primitive if self.param is None else f"{self.primitive}_{self.param}"


STEP_JOIN = "_then_"
"""Joins the slugs of a composition's steps in task names (and function keys)."""


def steps_from_slug(function: str) -> tuple[Step, ...]:
    """Inverse of the task-name slug: "first_k_3_then_reverse" -> its steps (template 0).

    Lets stages that only see task files (the SNI format has no field for it) recover what
    a synthetic training task computes. Raises ValueError for anything else.
    """
    steps = []
    for part in function.split(STEP_JOIN):
        matches = [p for p in PRIMITIVES if part == p.name or part.startswith(p.name + "_")]
        if not matches:
            raise ValueError(f"{function!r} is not a list-world function ({part!r} names no primitive)")
        primitive = max(matches, key=lambda p: len(p.name))
        raw = part[len(primitive.name) + 1 :]
        if (primitive.param_name is None) != (raw == ""):
            raise ValueError(f"{function!r}: bad parameter for {primitive.name!r}")
        param: Param = None if raw == "" else (int(raw) if raw.isdigit() else raw)
        steps.append(Step(primitive.name, param, 0))
    return tuple(steps)


def sample_instance(rng: random.Random, steps: Sequence[Step], config: SuiteConfig) -> tuple[str, str]:
    """A fresh (input, output) text pair of the function, drawn like a task's instances."""
    items = _raw_input(rng, steps, config)
    return format_list(items), format_result(run_steps(steps, items))


def run_steps(steps: Sequence[Step], items: Sequence[str]) -> Result:
    result: Result = list(items)
    for step in steps:
        if isinstance(result, str):
            raise ValueError(f"step {step.primitive!r} needs a list but got {result!r}")
        result = PRIMITIVES_BY_NAME[step.primitive].apply(result, step.param)
    return result


def describe_steps(steps: Sequence[Step]) -> str:
    parts = [PRIMITIVES_BY_NAME[s.primitive].describe(s.param, s.template) for s in steps]
    text = parts[0]
    for part in parts[1:]:
        text = f"{text.rstrip('.')}, then {part[0].lower()}{part[1:]}"
    return text


def category_of(steps: Sequence[Step]) -> str:
    """Primitive name for single steps, "composition:a+b" for pairs.

    Parameters are left out so reports pool e.g. all first_k tasks together.
    """
    names = [s.primitive for s in steps]
    return names[0] if len(names) == 1 else "composition:" + "+".join(names)


# --------------------------------------------------------------------------
# Suite


SplitName = Literal["train", "unseen_composition", "unseen_parameter", "unseen_paraphrase"]
SPLITS: tuple[SplitName, ...] = ("train", "unseen_composition", "unseen_parameter", "unseen_paraphrase")


@dataclass(frozen=True)
class SuiteConfig:
    min_items: int = 2
    max_items: int = 4
    train_instances: int = 200
    test_instances: int = 50
    positive_examples: int = 2
    # Training tasks per (primitive, parameter), each with a different wording.
    paraphrases_per_function: int = 2
    # Parameter values per parameterised primitive among single-step training tasks.
    values_per_primitive: int = 3
    train_compositions: int = 40
    unseen_compositions: int = 12
    unseen_values_per_primitive: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError(f"need 1 <= min_items <= max_items, got {self.min_items}, {self.max_items}")
        for name in (
            "train_instances", "test_instances", "paraphrases_per_function", "values_per_primitive",
            "unseen_values_per_primitive",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
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


def _domain(steps: Sequence[Step]) -> frozenset[Kind]:
    domain = ANY
    for step in steps:
        domain = domain & PRIMITIVES_BY_NAME[step.primitive].domain
    return domain


def _raw_input(rng: random.Random, steps: Sequence[Step], config: SuiteConfig) -> list[str]:
    domain = _domain(steps)
    mode = rng.choice(("word", "number", "mixed")) if domain == ANY else next(iter(domain))
    items = []
    for _ in range(rng.randint(config.min_items, config.max_items)):
        use_word = mode == "word" or (mode == "mixed" and rng.random() < 0.5)
        items.append(rng.choice(VOCABULARY) if use_word else str(rng.randint(0, MAX_NUMBER)))
    for step in steps:
        primitive = PRIMITIVES_BY_NAME[step.primitive]
        if primitive.enrich is not None:
            items = primitive.enrich(items, step.param, rng)
    return items


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
    rng: random.Random, steps: Sequence[Step], count: int, config: SuiteConfig, taken: set[str]
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
            items = _raw_input(rng, steps, config)
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
    name: str, split: SplitName, steps: tuple[Step, ...], instances: int, seed: int, config: SuiteConfig
) -> SynthTask:
    rng = random.Random(f"{seed}:{name}")
    taken: set[str] = set()
    pairs = _sample_examples(rng, steps, instances, config, taken)
    candidates = _sample_examples(rng, steps, _SHOWN_CANDIDATES * config.positive_examples, config, taken)
    shown = _varied(candidates, config.positive_examples)
    task = Task(
        name=name,
        definition=describe_steps(steps),
        positive_examples=tuple(
            Example(format_list(items), format_result(result), _explain(steps, items))
            for items, result in shown
        ),
        negative_examples=(),
        instances=tuple(
            Instance(f"{name}-{i:04d}", format_list(items), (format_result(result),))
            for i, (items, result) in enumerate(pairs)
        ),
        categories=(category_of(steps),),
    )
    return SynthTask(task=task, split=split, steps=steps)


# Step tuples per split, decided before any instance is generated.
_Plan = dict[SplitName, list[tuple[Step, ...]]]


def _train_step(rng: random.Random, primitive: Primitive) -> Step:
    return Step(primitive.name, primitive.sample_param(rng), rng.choice(primitive.train_templates))


def _informative_pair(
    rng: random.Random, pair: tuple[str, str], config: SuiteConfig, tries: int = 4
) -> tuple[Step, Step] | None:
    """Training-parameter steps for ``pair`` that make an informative task, if found."""
    first, second = (PRIMITIVES_BY_NAME[name] for name in pair)
    for _ in range(tries):
        steps = (_train_step(rng, first), _train_step(rng, second))
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


def build_suite(seed: int, config: SuiteConfig = SuiteConfig()) -> Suite:
    """Deterministic suite: the same seed and config give identical tasks."""
    rng = random.Random(seed)
    plan: _Plan = {split: [] for split in SPLITS}
    _plan_singles(rng, config, plan)
    _plan_compositions(rng, config, plan)
    built: dict[SplitName, tuple[SynthTask, ...]] = {}
    for split, step_lists in plan.items():
        instances = config.train_instances if split == "train" else config.test_instances
        built[split] = tuple(
            _make_task(
                f"synth_{split}_{i:03d}_" + STEP_JOIN.join(s.slug for s in steps),
                split, steps, instances, seed, config,
            )
            for i, steps in enumerate(step_lists)
        )
    return Suite(seed=seed, config=config, **built)


# --------------------------------------------------------------------------
# Output


_SNI_METADATA = {
    "Contributors": ["tagi"],
    "Source": ["tagi synthetic list world"],
    "URL": [],
    "Reasoning": [],
    "Input_language": ["English"],
    "Output_language": ["English"],
    "Instruction_language": ["English"],
    "Domains": ["Lists"],
}


def _sni_json(task: Task) -> str:
    body = task_to_dict(task)
    document = {**_SNI_METADATA, **body}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    """Readers never see half a file, even if generation is interrupted."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the data from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_suite(suite: Suite, out_dir: str | Path) -> None:
    """Write ``out_dir/<split>/<task>.json`` and ``out_dir/splits/<split>.txt``.

    Refuses to mix with task files from another suite: a stale file in a split
    directory would be picked up by directory-based loading.
    """
    out_dir = Path(out_dir)
    splits = suite.splits()
    for split, tasks in splits.items():
        wanted = {f"{t.task.name}.json" for t in tasks}
        stale = sorted(p.name for p in (out_dir / split).glob("*.json") if p.name not in wanted)
        if stale:
            raise ValueError(
                f"{out_dir / split} holds {len(stale)} task files not in this suite "
                f"(e.g. {stale[0]}); write to an empty directory"
            )
    (out_dir / "splits").mkdir(parents=True, exist_ok=True)
    for split, tasks in splits.items():
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        for synth in tasks:
            _atomic_write(out_dir / split / f"{synth.task.name}.json", _sni_json(synth.task))
        _atomic_write(out_dir / "splits" / f"{split}.txt", "".join(f"{t.task.name}\n" for t in tasks))


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
            texts[task.definition] = None
            for example in task.positive_examples:
                texts[example.input] = None
                texts[example.output] = None
            for instance in task.instances:
                texts[instance.input] = None
                texts.update(dict.fromkeys(instance.outputs))
    return list(texts)
