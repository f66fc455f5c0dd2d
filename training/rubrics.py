"""Rubrics per task category for CITING (arXiv 2310.02527): what a good answer must satisfy, as text
the hypernetwork can read with the instruction, and as checks that say which criteria an answer breaks.

In the paper a teacher LLM writes each rubric. Without such a writer, `derive_rubrics` reads them off
the category's *training* pairs, deterministically: the answer's type (one label of a closed set, a
whole number in a range, a list drawn from the input's items, or free text of some length) and the
relations every training answer keeps with its input (its items come from the input, their order is
kept, it has as many items as the input...). A candidate criterion is kept only if it holds on every
training pair of the category, so no training reference breaks its own rubric; held-back and test
pairs are never read, so a rubric cannot leak what evaluation scores. A user can write rubrics
instead (a person, or an LLM offline): `load_rubrics` reads them from JSON or YAML, in the format
`save_rubrics` writes.

Items follow the list world's text conventions (training.world): items joined by ", ", "none" for
the empty list. On free-text (SNI) inputs the item relations rarely hold on every pair, so they drop
out by the same rule and the rubric keeps the answer's labels or its length.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypernet.errors import UserError
from hypernet.files import write_json
from training.common import TaskSet, task_pairs
from training.data import format_instruction, normalize_answer
from training.suite import SuiteConfig, build_suite
from training.world import parse_list

RUBRICS_FILE = "rubrics.json"
"""The derived rubrics a stage uses, written next to it (and by `tagi rubrics`)."""
MAX_LABELS = 12
"""A category whose answers take at most this many values is a closed label set..."""
LABEL_REPEATS = 4
"""...when its pairs are at least this many times as many as its labels (labels recur; a handful of
free answers that happen to differ are not a label set)."""
_INTEGER = re.compile(r"-?\d+")
_PLAIN_LABEL = re.compile(r"[\w ]+")
"""Labels written bare in a rubric's text; others (with punctuation: "Yes.") are quoted."""

Params = dict[str, Any]


# ---- checks ------------------------------------------------------------------------------------


def _items(text: str) -> list[str]:
    return parse_list(text.strip())


def _integers(items: list[str]) -> list[int] | None:
    return [int(i) for i in items] if items and all(_INTEGER.fullmatch(i) for i in items) else None


def _count(text: str) -> int | None:
    return int(text) if _INTEGER.fullmatch(text) else None


def _non_empty(_: Params, __: str, answer: str) -> bool:
    return bool(answer)


def _one_of(params: Params, _: str, answer: str) -> bool:
    return normalize_answer(answer) in {normalize_answer(label) for label in params["labels"]}


def _number(params: Params, _: str, answer: str) -> bool:
    value = _count(answer)
    return value is not None and params["min"] <= value <= params["max"]


def _items_from_input(_: Params, input_text: str, answer: str) -> bool:
    """Each answer item is an input item, used at most as often as the input has it."""
    have = Counter(_items(input_text))
    return all(have[item] >= n for item, n in Counter(_items(answer)).items())


def _order_kept(_: Params, input_text: str, answer: str) -> bool:
    """The answer's items that the input has are a subsequence of the input's (an item the input
    lacks breaks items_from_input, not the order)."""
    have = _items(input_text)
    remaining = iter(have)
    return all(any(item == candidate for candidate in remaining) for item in _items(answer) if item in have)


def _same_items(_: Params, input_text: str, answer: str) -> bool:
    return Counter(_items(answer)) == Counter(_items(input_text))


def _sorted(params: Params, _: str, answer: str) -> bool:
    items = _items(answer)
    numbers = _integers(items)
    if numbers is None:
        return not items  # "none" has nothing out of order; words or a blank item are not numbers in order
    return numbers == sorted(numbers, reverse=params["direction"] == "descending")


def _length(params: Params, _: str, answer: str) -> bool:
    size = len(answer.split()) if params["unit"] == "words" else len(_items(answer))
    return params["min"] <= size <= params["max"]


_RELATIONS: dict[str, Callable[[int, int], bool]] = {
    "equal": lambda a, b: a == b,
    "fewer": lambda a, b: a < b,
    "at_most": lambda a, b: a <= b,
}


def _count_vs_input(params: Params, input_text: str, answer: str) -> bool:
    """The answer's number (of: number) or its item count (of: items) against the input's item count."""
    value = _count(answer) if params["of"] == "number" else len(_items(answer))
    return value is not None and _RELATIONS[params["relation"]](value, len(_items(input_text)))


def _no_check(_: Params, __: str, ___: str) -> bool:
    return True


@dataclass(frozen=True)
class Kind:
    """A kind of criterion: its check, and the parameters it takes (name -> what a valid value is)."""

    check: Callable[[Params, str, str], bool]
    params: dict[str, Callable[[Any], bool]] = field(default_factory=dict)
    describe: str = ""
    """What the parameters mean, for error messages."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_labels(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value)


def _choice(*allowed: str) -> Callable[[Any], bool]:
    return lambda value: value in allowed


KINDS: dict[str, Kind] = {
    "non_empty": Kind(_non_empty),
    "one_of": Kind(
        _one_of,
        {"labels": _is_labels},
        "labels: a non-empty list of strings; YAML reads a bare yes or no as a boolean: quote them",
    ),
    "number": Kind(_number, {"min": _is_int, "max": _is_int}, "min, max: integers"),
    "items_from_input": Kind(_items_from_input),
    "order_kept": Kind(_order_kept),
    "same_items": Kind(_same_items),
    "sorted": Kind(_sorted, {"direction": _choice("ascending", "descending")}, "direction: ascending or descending"),
    "length": Kind(
        _length, {"unit": _choice("words", "items"), "min": _is_int, "max": _is_int}, "unit: words or items; min, max: integers"
    ),
    "count_vs_input": Kind(
        _count_vs_input,
        {"of": _choice("number", "items"), "relation": _choice(*_RELATIONS)},
        "of: number or items; relation: " + ", ".join(_RELATIONS),
    ),
    "text": Kind(_no_check),
}
"""Every checkable kind, plus "text": a criterion that is only read (a user's, which no code checks)."""


# ---- rubrics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    """One thing a good answer satisfies: `text` is what the model reads, `kind` + `params` the check."""

    name: str
    text: str
    kind: str
    params: Params = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name.strip() or not self.text.strip():
            raise ValueError(f"criterion {self.name!r}: name and text must not be empty")
        kind = KINDS.get(self.kind)
        if kind is None:
            raise ValueError(f"criterion {self.name!r}: unknown kind {self.kind!r} (one of: {', '.join(KINDS)})")
        wrong = set(kind.params) ^ set(self.params) or {n for n, valid in kind.params.items() if not valid(self.params[n])}
        if wrong:
            expected = kind.describe or "no params"
            raise ValueError(f"criterion {self.name!r}: bad params {sorted(wrong)} for kind {self.kind!r} ({expected})")
        if "min" in self.params and self.params["min"] > self.params["max"]:
            raise ValueError(f"criterion {self.name!r}: min {self.params['min']} is above max {self.params['max']}")

    def holds(self, input_text: str, answer: str) -> bool:
        """Whether `answer` (surrounding whitespace aside, as a model's output is read) meets it."""
        return KINDS[self.kind].check(self.params, input_text, answer.strip())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "text": self.text, "kind": self.kind, "params": self.params}


@dataclass(frozen=True)
class Rubric:
    """The criteria of one category. `summary`: the rubric as its author wrote it, if they did;
    otherwise the model reads the criteria's texts."""

    category: str
    criteria: tuple[Criterion, ...]
    summary: str | None = None

    def __post_init__(self) -> None:
        if not self.criteria:
            raise ValueError("a rubric needs at least one criterion")
        names = [c.name for c in self.criteria]
        if len(set(names)) != len(names):
            raise ValueError(f"criterion names repeat: {sorted(n for n, k in Counter(names).items() if k > 1)}")
        if self.summary is not None and not self.summary.strip():
            raise ValueError("text, when given, must not be empty")

    def text(self) -> str:
        """The rubric as the hypernetwork reads it (hypernet.rubric.with_rubric appends it)."""
        return self.summary or " ".join(c.text for c in self.criteria)

    def violations(self, input_text: str, answer: str) -> list[str]:
        """Names of the criteria `answer` breaks, in the rubric's order ([]: it passes)."""
        return [c.name for c in self.criteria if not c.holds(input_text, answer)]

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"criteria": [c.to_dict() for c in self.criteria]}
        return body if self.summary is None else {"text": self.summary, **body}


# ---- derivation --------------------------------------------------------------------------------


def _answer_type(pairs: list[tuple[str, str]]) -> Criterion | None:
    """The answer's type if it is a closed one: a whole number in the range seen, or one label of
    the set seen (a set small and repeated enough to be one)."""
    answers = [a for _, a in pairs]
    numbers = [_count(a) for a in answers]
    if all(n is not None for n in numbers):
        low, high = min(numbers), max(numbers)  # type: ignore[type-var]
        return Criterion("number", f"The answer is a whole number from {low} to {high}.", "number", {"min": low, "max": high})
    labels = sorted(set(answers))
    if any(not label.strip() for label in labels):
        return None  # a blank answer is no label a rubric can name (a blank text breaks `non_empty` checks anyway)
    if len({normalize_answer(label) for label in labels}) <= MAX_LABELS and len(answers) >= LABEL_REPEATS * len(labels):
        plain = all(_PLAIN_LABEL.fullmatch(label) for label in labels)
        listed = ", ".join(labels if plain else (json.dumps(label) for label in labels))
        return Criterion("one_of", f"The answer is one of: {listed}.", "one_of", {"labels": labels})
    return None


def _is_list(text: str) -> bool:
    """Whether an input reads as a list of items (the list world's inputs): items are one word or
    number each. Free text, split at its commas, is no list: relations to its "items" would be chance."""
    return all(item and not any(c.isspace() for c in item) for item in _items(text))


def _relations(pairs: list[tuple[str, str]], numeric: bool) -> list[Criterion]:
    """Relations with the input that every pair keeps, the strongest of each family only (exactly
    the input's items makes "items from the input" and "as many items" redundant); candidates that
    would hold only trivially (an order among answers that never have two items) are not offered."""
    items = [(_items(i), _items(a)) for i, a in pairs]
    several = any(len(a) >= 2 for _, a in items)
    source = "The answer is one of the input's items." if numeric else "The answer's items all come from the input."
    candidates = [Criterion("items_from_input", source, "items_from_input")]
    if several:
        candidates += [
            Criterion("same_items", "The answer has exactly the input's items.", "same_items"),
            Criterion("order_kept", "The answer keeps the items in the input's order.", "order_kept"),
        ]
        if any(len(set(a)) >= 2 for _, a in items):
            for direction in ("ascending", "descending"):
                text = f"The answer's items are numbers in {direction} order."
                candidates.append(Criterion("sorted", text, "sorted", {"direction": direction}))
    kept = [c for c in candidates if all(c.holds(i, a) for i, a in pairs)]
    names = {c.name for c in kept}
    if "same_items" in names:
        kept = [c for c in kept if c.name != "items_from_input"]
    if numeric:
        of, counts = "number", [("equal", "is the number of"), ("at_most", "is at most the number of")]
    else:
        of, counts = (
            "items",
            [("equal", "has as many items as"), ("fewer", "has fewer items than"), ("at_most", "has no more items than")],
        )
    for relation, phrase in counts:
        candidate = Criterion(
            "count_vs_input",
            f"The answer {phrase} {'items in ' * numeric}the input.",
            "count_vs_input",
            {"of": of, "relation": relation},
        )
        if all(candidate.holds(i, a) for i, a in pairs):
            implied = {"equal": {"same_items"}, "fewer": set(), "at_most": {"same_items", "items_from_input"}}[relation]
            if not implied & names:
                kept.append(candidate)
            break  # the strongest relation that holds; weaker ones add nothing
    return kept


def derive_rubric(category: str, pairs: list[tuple[str, str]]) -> Rubric:
    """The rubric of one category from its (input, reference) training pairs; see the module docstring."""
    if not pairs:
        raise ValueError(f"category {category!r} has no training pairs to derive a rubric from")
    pairs = [(i, a.strip()) for i, a in pairs]
    answer_type = _answer_type(pairs)
    criteria: list[Criterion] = []
    if answer_type is not None:
        criteria.append(answer_type)
    relations: list[Criterion] = []
    if all(_is_list(i) for i, _ in pairs) and (answer_type is None or answer_type.kind == "number"):
        relations = _relations(pairs, numeric=answer_type is not None)
    criteria += relations
    if answer_type is None:
        unit = "items" if {"items_from_input", "same_items"} & {c.name for c in relations} else "words"
        sizes = [len(a.split()) if unit == "words" else len(_items(a)) for _, a in pairs]
        low, high = min(sizes), max(sizes)
        amount = f"{low} to {high} {unit}" if low != high else f"{low} {unit.removesuffix('s') if low == 1 else unit}"
        criteria.append(Criterion("length", f"The answer has {amount}.", "length", {"unit": unit, "min": low, "max": high}))
    if all(a for _, a in pairs):
        criteria.append(Criterion("non_empty", "The answer is not empty.", "non_empty"))
    return Rubric(category, tuple(criteria))


def derive_rubrics(task_set: TaskSet) -> dict[str, Rubric]:
    """One rubric per category of `task_set` (TaskSet.categories()), from its training pairs only
    (never `held_back`); the same task set always gives the same rubrics."""
    categories = task_set.categories()
    pairs: dict[str, list[tuple[str, str]]] = {category: [] for category in sorted(set(categories))}
    for pair in task_set.train:
        pairs[categories[pair.task]].append((pair.input, pair.output))
    return {category: derive_rubric(category, category_pairs) for category, category_pairs in pairs.items()}


def synthetic_task_set(suite: SuiteConfig, seed: int, held_back: int) -> TaskSet:
    """The training task set a recipe's stages see on the list world (its `train` split, the same
    held-back instances kept out), built in memory."""
    tasks = [synth.task for synth in build_suite(seed, suite).train]
    train, held = [], []
    for index, task in enumerate(tasks):
        fit, back = task_pairs(index, task, held_back, seed)
        train += fit
        held += back
    return TaskSet(tasks, [format_instruction(t, "def") for t in tasks], train, held)


# ---- files -------------------------------------------------------------------------------------


def rubrics_to_dict(rubrics: Mapping[str, Rubric]) -> dict[str, Any]:
    return {category: rubric.to_dict() for category, rubric in rubrics.items()}


def save_rubrics(rubrics: Mapping[str, Rubric], path: Path) -> None:
    """Atomic JSON, in the format load_rubrics reads (so a user can edit the file and give it back)."""
    write_json(path, rubrics_to_dict(rubrics))


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read rubrics file {path}: {getattr(err, 'strerror', None) or err}") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise UserError(f"{path}: invalid YAML{where}: {problem}") from None
    raise UserError(f"{path}: a rubrics file ends in .json, .yaml or .yml")


def _criterion(data: Any, where: str) -> Criterion:
    if not isinstance(data, dict):
        raise ValueError(f"{where} is not a mapping")
    unknown = set(data) - {"name", "text", "kind", "params"}
    missing = {"name", "text", "kind"} - set(data)
    if missing:
        raise ValueError(f"{where}: missing {sorted(missing)}")
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (name, text, kind, params)")
    params = data.get("params", {})
    if not all(isinstance(data[k], str) for k in ("name", "text", "kind")) or not isinstance(params, dict):
        raise ValueError(f"{where}: name, text and kind are strings, params a mapping")
    return Criterion(data["name"], data["text"], data["kind"], params)


def _rubric(category: str, data: Any) -> Rubric:
    if not isinstance(data, dict) or set(data) - {"text", "criteria"}:
        raise ValueError("expected a mapping with 'criteria' and optionally 'text'")
    criteria = data.get("criteria")
    if not isinstance(criteria, list) or not criteria:
        raise ValueError("'criteria' must be a non-empty list")
    summary = data.get("text")
    if summary is not None and not isinstance(summary, str):
        raise ValueError("'text' must be a string")
    return Rubric(category, tuple(_criterion(c, f"criterion {n}") for n, c in enumerate(criteria)), summary)


def load_rubrics(path: Path) -> dict[str, Rubric]:
    """A user's rubrics (JSON or YAML: category -> {text?, criteria: [{name, text, kind, params}]});
    anything wrong is one line naming the file and the problem."""
    data = _read(path)
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path}: expected a non-empty mapping of category -> rubric")
    rubrics = {}
    for category, body in data.items():
        if not isinstance(category, str) or not category.strip():
            raise UserError(f"{path}: category {category!r} is not a non-empty string")
        try:
            rubrics[category] = _rubric(category, body)
        except ValueError as err:
            raise UserError(f"{path}: category {category!r}: {err}") from None
    return rubrics
