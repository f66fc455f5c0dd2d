"""The "list world": list operations (primitives), their wordings, and functions built from them.

Real SNI tasks are too few and too varied to tell whether a hypernetwork
generalises from instructions; here every task is a known function of a short
list, so held-out tasks can be built that differ from training in exactly one
controlled way (a new combination, a new parameter value, or a new wording),
and correctness of every reference output is checkable. This module is the
world itself; ``training.suite`` plans tasks in it and ``training.suite_files``
writes them.

Every primitive is about positions, equality or the order of numbers:
operations that need per-word spelling knowledge (uppercase, alphabetical
order, initial letters) or multi-token arithmetic (sum) cost a tiny model most
of its budget (see the model card, checkpoints/tiny/README.md) and are left out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from training.data import FUNCTION_FIELD, FunctionStep, Param, Task

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
        "reverse",
        ANY,
        "list",
        lambda xs, _: xs[::-1],
        (
            "Reverse the order of the items in the list.",
            "Write the list backwards.",
            "Output the items of the list from last to first.",
            "Return the list in reverse order.",
            "Flip the list so that the last item comes first.",
        ),
    ),
    Primitive(
        "sort_asc",
        NUMBERS,
        "list",
        lambda xs, _: sorted(xs, key=int),
        (
            "Sort the numbers from smallest to largest.",
            "Arrange the numbers in ascending order.",
            "Put the numbers in increasing order.",
            "Order the list so that no number is smaller than the one before it.",
            "List the numbers from lowest to highest.",
        ),
    ),
    Primitive(
        "sort_desc",
        NUMBERS,
        "list",
        lambda xs, _: sorted(xs, key=int, reverse=True),
        (
            "Sort the numbers from largest to smallest.",
            "Arrange the numbers in descending order.",
            "Put the numbers in decreasing order.",
            "Order the list so that no number is bigger than the one before it.",
            "List the numbers from highest to lowest.",
        ),
    ),
    Primitive(
        "first_k",
        ANY,
        "list",
        lambda xs, k: xs[:k],
        (
            "Keep only the first {k} {items} of the list.",
            "Take the first {k} {items}.",
            "Output the {k} {items} at the start of the list.",
            "Return the opening {k} {items} of the list.",
            "Write down the first {k} {items} of the list and drop the rest.",
        ),
        param_name="k",
        train_values=(1, 3),
        held_out_values=(2,),
    ),
    Primitive(
        "last_k",
        ANY,
        "list",
        lambda xs, k: xs[-k:],
        (
            "Keep only the last {k} {items} of the list.",
            "Take the final {k} {items}.",
            "Output the {k} {items} at the end of the list.",
            "Return the closing {k} {items} of the list.",
            "Write down the last {k} {items} of the list and drop the rest.",
        ),
        param_name="k",
        train_values=(1, 3),
        held_out_values=(2,),
    ),
    Primitive(
        "drop_first_k",
        ANY,
        "list",
        lambda xs, k: xs[k:],
        (
            "Remove the first {k} {items} from the list.",
            "Drop the first {k} {items} and keep the rest.",
            "Skip the first {k} {items} of the list.",
            "Delete the {k} {items} at the start of the list.",
            "Output everything after the first {k} {items}.",
        ),
        # Held-out k is interpolated (1 and 3 are seen), for every k primitive:
        # k = 4 on lists of at most 4 items would leave nothing to check.
        param_name="k",
        train_values=(1, 3),
        held_out_values=(2,),
    ),
    Primitive(
        "every_second",
        ANY,
        "list",
        lambda xs, _: xs[::2],
        (
            "Keep every second item, starting with the first one.",
            "Take the first, third, fifth and so on items of the list.",
            "Keep the items in odd positions.",
            "Remove every second item, starting from the second one.",
            "Keep the first item and then every other item after it.",
        ),
    ),
    Primitive(
        "dedupe",
        ANY,
        "list",
        lambda xs, _: list(dict.fromkeys(xs)),
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
        "count",
        ANY,
        "number",
        lambda xs, _: str(len(xs)),
        (
            "Count the items in the list.",
            "Give the number of items in the list.",
            "Report how many items the list has.",
            "Output the length of the list.",
            "Write how many entries there are in the list.",
        ),
    ),
    Primitive(
        "max",
        NUMBERS,
        "number",
        _max,
        (
            "Find the largest number in the list.",
            "Output the maximum value.",
            "Return the biggest number.",
            "Give the highest number in the list.",
            "Write the greatest of the numbers.",
        ),
    ),
    Primitive(
        "min",
        NUMBERS,
        "number",
        _min,
        (
            "Find the smallest number in the list.",
            "Output the minimum value.",
            "Return the lowest number.",
            "Give the least number in the list.",
            "Pick out the tiniest of the numbers.",
        ),
    ),
    Primitive(
        "above",
        NUMBERS,
        "list",
        lambda xs, n: [x for x in xs if int(x) > int(n)],
        (
            "Keep only the numbers greater than {n}.",
            "Select the numbers above {n}.",
            "Remove every number that is {n} or less.",
            "Output the numbers that are bigger than {n}.",
            "Filter the list down to numbers exceeding {n}.",
        ),
        param_name="n",
        train_values=(25, 50, 75),
        held_out_values=(40, 60),
    ),
    Primitive(
        "contains",
        WORDS,
        "yesno",
        lambda xs, word: _yes_no(word in xs),
        (
            "Answer yes if the list contains {x}, otherwise answer no.",
            "Say yes if {x} is in the list and no if it is not.",
            "Check whether {x} appears in the list and answer yes or no.",
            "Tell with yes or no whether the word {x} is one of the items.",
            "Reply yes when {x} occurs in the list, else reply no.",
        ),
        param_name="x",
        train_values=tuple(w for w in VOCABULARY if w not in HELD_OUT_WORDS),
        held_out_values=HELD_OUT_WORDS,
        enrich=_plant_word,
    ),
    Primitive(
        "is_sorted",
        NUMBERS,
        "yesno",
        _is_ascending,
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
    """One step of a task: a primitive, its parameter, and which of its wordings describes it."""

    primitive: str
    param: Param
    template: int

    @property
    def function(self) -> FunctionStep:
        """The step without its wording: what a task file declares (training.data.FunctionStep)."""
        return (self.primitive, self.param)


def steps_of(task: Task) -> tuple[Step, ...]:
    """The steps a task file declares (template 0: the wording is not part of the function).

    Stages that re-sample a training task's function (stage 0's world skills) read it here,
    from the task's ``tagi_function`` field, never from its name.
    """
    if task.function is None:
        raise ValueError(f"task {task.name!r} declares no list-world function ({FUNCTION_FIELD!r}): not a synthetic task")
    steps = []
    for name, param in task.function:
        primitive = PRIMITIVES_BY_NAME.get(name)
        if primitive is None:
            raise ValueError(f"task {task.name!r}: {name!r} names no list-world primitive")
        if (param is None) != (primitive.param_name is None):
            raise ValueError(f"task {task.name!r}: {name!r} given parameter {param!r}")
        steps.append(Step(name, param, 0))
    return tuple(steps)


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


def domain_of(steps: Sequence[Step]) -> frozenset[Kind]:
    """The item kinds every step of a function can read."""
    domain = ANY
    for step in steps:
        domain = domain & PRIMITIVES_BY_NAME[step.primitive].domain
    return domain


def random_input(rng: random.Random, steps: Sequence[Step], min_items: int, max_items: int) -> list[str]:
    """A random list the function can read, nudged by each step so that it has something to do."""
    domain = domain_of(steps)
    mode = rng.choice(("word", "number", "mixed")) if domain == ANY else next(iter(domain))
    items = []
    for _ in range(rng.randint(min_items, max_items)):
        use_word = mode == "word" or (mode == "mixed" and rng.random() < 0.5)
        items.append(rng.choice(VOCABULARY) if use_word else str(rng.randint(0, MAX_NUMBER)))
    for step in steps:
        primitive = PRIMITIVES_BY_NAME[step.primitive]
        if primitive.enrich is not None:
            items = primitive.enrich(items, step.param, rng)
    return items
