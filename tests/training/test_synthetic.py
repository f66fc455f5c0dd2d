"""Tests for the list world (training.world), suite planning (training.suite) and its files
(training.suite_files): primitives, suite construction, leak-freedom, declared functions."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path
from string import Formatter

import pytest

from training.data import FunctionStep, Task, format_instruction, load_task, load_tasks, read_split
from training.suite import SPLITS, Suite, SuiteConfig, SynthTask, build_suite, corpus_texts, read_natural_wordings
from training.suite_files import write_suite
from training.world import (
    COMPOSITION_FRAMES,
    EMPTY_LIST,
    PRIMITIVES,
    PRIMITIVES_BY_NAME,
    UNSEEN_ITEM_WORDS,
    VOCABULARY,
    Primitive,
    Step,
    composable,
    describe_steps,
    format_list,
    format_result,
    parse_list,
    run_steps,
    steps_of,
    training_wordings,
)

SEED = 0


@pytest.fixture(scope="module")
def suite() -> Suite:
    return build_suite(SEED)


def _all(suite: Suite) -> list[SynthTask]:
    return [t for tasks in suite.splits().values() for t in tasks]


def _train_steps(suite: Suite) -> list[Step]:
    return [step for t in suite.train for step in t.steps]


def _pair(t: SynthTask) -> tuple[str, str]:
    first, second = t.steps
    return first.primitive, second.primitive


# --------------------------------------------------------------------------
# Vocabulary, primitives and descriptions


def test_vocabulary_is_large_simple_and_unambiguous() -> None:
    assert len(VOCABULARY) >= 200
    assert len(set(VOCABULARY)) == len(VOCABULARY)
    assert all(w.isalpha() and w.islower() and w.isascii() for w in VOCABULARY)
    # Articles vanish under SNI normalisation; the rest are answer words.
    assert not {"a", "an", "the", "yes", "no", EMPTY_LIST} & set(VOCABULARY)


# The canonical (first) and held-out (last) wordings as they were before the
# template lists grew: the canonical wording is every task's definition and the
# last is the unseen-paraphrase split, so neither may drift.
CANONICAL_AND_HELD_OUT = {
    "reverse": ("Reverse the order of the items in the list.", "Flip the list so that the last item comes first."),
    "sort_asc": ("Sort the numbers from smallest to largest.", "List the numbers from lowest to highest."),
    "sort_desc": ("Sort the numbers from largest to smallest.", "List the numbers from highest to lowest."),
    "first_k": (
        "Keep only the first {k} {items} of the list.",
        "Write down the first {k} {items} of the list and drop the rest.",
    ),
    "last_k": ("Keep only the last {k} {items} of the list.", "Write down the last {k} {items} of the list and drop the rest."),
    "drop_first_k": ("Remove the first {k} {items} from the list.", "Output everything after the first {k} {items}."),
    "every_second": (
        "Keep every second item, starting with the first one.",
        "Keep the first item and then every other item after it.",
    ),
    "dedupe": (
        "Remove duplicate items, keeping the first occurrence of each.",
        "Write the list without repeats, in the original order.",
    ),
    "count": ("Count the items in the list.", "Write how many entries there are in the list."),
    "max": ("Find the largest number in the list.", "Write the greatest of the numbers."),
    "min": ("Find the smallest number in the list.", "Pick out the tiniest of the numbers."),
    "above": ("Keep only the numbers greater than {n}.", "Filter the list down to numbers exceeding {n}."),
    "contains": (
        "Answer yes if the list contains {x}, otherwise answer no.",
        "Reply yes when {x} occurs in the list, else reply no.",
    ),
    "is_sorted": (
        "Answer yes if the numbers are in ascending order, otherwise answer no.",
        "Reply yes when each number is at least the one before it, else reply no.",
    ),
}

# The placeholders each kind of parameter takes, each exactly once in every template and clause.
PLACEHOLDERS = {None: {}, "k": {"k": 1, "items": 1}, "n": {"n": 1}, "x": {"x": 1}}


def _placeholders(text: str) -> dict[str, int]:
    return dict(Counter(field for _, field, _, _ in Formatter().parse(text) if field is not None))


def _values(p: Primitive) -> list[object]:
    return [None] if p.param_name is None else [*p.train_values[:3], *p.held_out_values]


def test_primitive_inventory() -> None:
    assert len(PRIMITIVES) >= 12
    assert len(PRIMITIVES_BY_NAME) == len(PRIMITIVES)
    assert set(CANONICAL_AND_HELD_OUT) == set(PRIMITIVES_BY_NAME)
    for p in PRIMITIVES:
        assert len(p.templates) >= 20 and len(set(p.templates)) == len(p.templates), p.name
        assert p.held_out_template not in p.train_templates
        assert (p.templates[0], p.templates[p.held_out_template]) == CANONICAL_AND_HELD_OUT[p.name]
        for template in (p.templates[0], p.templates[-1]):
            assert template[0].isupper() and template.endswith("."), template
        for template in p.templates:
            # Questions and lowercase or terse forms are wordings people type; still one sentence.
            assert template == template.strip() and template[0].isalpha() and template[-1] in ".?", template
            assert "  " not in template, template
            assert _placeholders(template) == PLACEHOLDERS[p.param_name], template
        if p.param_name:
            assert p.train_values and p.held_out_values
            assert not set(p.train_values) & set(p.held_out_values), p.name
        else:
            assert not p.train_values and not p.held_out_values


def test_clauses_are_lowercase_imperative_phrases() -> None:
    for p in PRIMITIVES:
        assert len(p.clauses) >= 6 and len(set(p.clauses)) == len(p.clauses), p.name
        held_out = p.templates[p.held_out_template].rstrip(".").lower()
        for clause in p.clauses:
            assert clause == clause.strip() and clause[0].islower() and clause[-1] not in ".?!;,", clause
            assert _placeholders(clause) == PLACEHOLDERS[p.param_name], clause
            assert clause != held_out, clause


def test_no_wording_is_shared_between_primitives() -> None:
    for attribute in ("templates", "clauses"):
        owners: dict[str, str] = {}
        for p in PRIMITIVES:
            for text in getattr(p, attribute):
                assert owners.setdefault(text.lower(), p.name) == p.name, (text, owners[text.lower()], p.name)


def test_every_wording_formats_completely() -> None:
    for p in PRIMITIVES:
        for value in _values(p):
            for text in (*p.templates, *p.clauses):
                filled = p.fill(text, value)
                assert "{" not in filled and "}" not in filled, (p.name, text)
                if value is not None:
                    assert str(value) in filled, (p.name, text)
        for index in range(len(p.templates)):
            assert "{" not in p.describe(_values(p)[0], index), (p.name, index)


def _masked(name: str, words: tuple[str, ...]) -> set[str]:
    pattern = re.compile(r"\b(" + "|".join(words) + r")\b", re.IGNORECASE)
    p = PRIMITIVES_BY_NAME[name]
    return {pattern.sub("<W>", text) for text in (*p.templates, *p.clauses)}


@pytest.mark.parametrize(
    ("one", "other", "deciding"),
    [
        ("max", "min", ("largest", "biggest", "highest", "maximum", "max", "smallest", "lowest", "least", "minimum", "min")),
        (
            "sort_asc",
            "sort_desc",
            ("smallest", "largest", "biggest", "ascending", "descending", "increasing", "decreasing")
            + ("low", "high", "up", "down", "increase", "decrease", "smaller", "bigger"),
        ),
        ("first_k", "last_k", ("first", "last", "final", "start", "end", "beginning", "front", "back", "opening", "closing")),
    ],
)
def test_antonyms_share_frames_so_the_deciding_word_decides(one: str, other: str, deciding: tuple[str, ...]) -> None:
    shared = _masked(one, deciding) & _masked(other, deciding)
    assert len(shared) >= 15, sorted(shared)


def test_compositions_of_any_templates_read_as_one_sentence() -> None:
    first, second = PRIMITIVES_BY_NAME["reverse"], PRIMITIVES_BY_NAME["max"]
    for i in first.train_templates:
        for j in second.train_templates:
            text = describe_steps((Step("reverse", None, i), Step("max", None, j)))
            assert ", then " in text and text[-1] in ".?", text
            assert "?," not in text and ".," not in text and text.count("?") <= 1, text
    i_want_index = second.templates.index("I want the biggest number in the list.")
    i_want = describe_steps((Step("reverse", None, 0), Step("max", None, i_want_index)))
    assert i_want == "Reverse the order of the items in the list, then I want the biggest number in the list."


# --------------------------------------------------------------------------
# Training wordings


def test_single_step_training_wordings_are_every_training_template() -> None:
    for p in PRIMITIVES:
        value = _values(p)[0]
        step = Step(p.name, value, 0)
        wordings = training_wordings((step,), random.Random(SEED), limit=1000)
        assert wordings[0] == describe_steps((step,)) == p.describe(value, 0)
        assert len(set(wordings)) == len(wordings)
        assert set(wordings) == {p.describe(value, i) for i in p.train_templates}, p.name
        assert p.describe(value, p.held_out_template) not in wordings


def test_training_wordings_respect_the_limit_and_the_seed() -> None:
    step = (Step("first_k", 3, 2),)
    three = training_wordings(step, random.Random(SEED), limit=3)
    assert len(three) == 3 and three[0] == "Output the 3 items at the start of the list."
    assert training_wordings(step, random.Random(SEED), limit=3) == three
    assert training_wordings(step, random.Random(SEED), limit=100) != training_wordings(step, random.Random(SEED + 1), limit=100)
    assert training_wordings(step, random.Random(SEED), limit=1) == three[:1]
    with pytest.raises(ValueError, match="limit"):
        training_wordings(step, random.Random(SEED), limit=0)


def test_training_wordings_refuse_the_held_out_template_and_long_chains() -> None:
    held = PRIMITIVES_BY_NAME["count"].held_out_template
    with pytest.raises(ValueError, match="held-out"):
        training_wordings((Step("count", None, held),), random.Random(SEED), limit=5)
    with pytest.raises(ValueError, match="held-out"):
        training_wordings((Step("reverse", None, 0), Step("count", None, held)), random.Random(SEED), limit=5)
    with pytest.raises(ValueError, match="one or two steps"):
        training_wordings([Step("reverse", None, 0)] * 3, random.Random(SEED), limit=5)


def _fillings(steps: tuple[Step, Step]) -> dict[str, str]:
    """Every frame x clause x clause text of a two-step function, mapped to its frame."""
    one, two = (PRIMITIVES_BY_NAME[s.primitive] for s in steps)
    fillings = {}
    for frame in COMPOSITION_FRAMES:
        for a in one.clauses:
            for b in two.clauses:
                text = frame.format(first=one.fill(a, steps[0].param), second=two.fill(b, steps[1].param))
                fillings[text[0].upper() + text[1:]] = frame
    return fillings


def test_composition_wordings_fill_frames_with_clauses() -> None:
    assert len(COMPOSITION_FRAMES) >= 8 and len(set(COMPOSITION_FRAMES)) == len(COMPOSITION_FRAMES)
    for frame in COMPOSITION_FRAMES:
        assert _placeholders(frame) == {"first": 1, "second": 1}, frame
    steps = (Step("reverse", None, 0), Step("first_k", 2, 0))
    wordings = training_wordings(steps, random.Random(SEED), limit=60)
    assert wordings[0] == "Reverse the order of the items in the list, then keep only the first 2 items of the list."
    assert len(wordings) == 60 and len(set(wordings)) == 60
    fillings = _fillings(steps)
    assert set(wordings[1:]) <= set(fillings)
    assert len({fillings[w] for w in wordings[1:]}) >= 6  # many frames, not one
    assert all(w[0].isupper() and "{" not in w for w in wordings)
    assert wordings == training_wordings(steps, random.Random(SEED), limit=60)
    assert wordings != training_wordings(steps, random.Random(SEED + 1), limit=60)


def test_composition_wordings_never_contain_a_held_out_template() -> None:
    for one in PRIMITIVES:
        for two in PRIMITIVES:
            if not composable(one, two):
                continue
            steps = (Step(one.name, _values(one)[0], 0), Step(two.name, _values(two)[0], 0))
            held_out = [p.describe(s.param, p.held_out_template).rstrip(".").lower() for p, s in zip((one, two), steps)]
            for wording in training_wordings(steps, random.Random(SEED), limit=10_000)[1:]:
                assert not any(h in wording.lower() for h in held_out), wording


HAND_CASES = [
    ("reverse", ["apple", "7", "river"], None, ["river", "7", "apple"]),
    ("sort_asc", ["10", "9", "100", "9"], None, ["9", "9", "10", "100"]),
    ("sort_desc", ["10", "9", "55"], None, ["55", "10", "9"]),
    ("first_k", ["a1", "b2", "c3", "d4"], 2, ["a1", "b2"]),
    ("first_k", ["x", "y"], 4, ["x", "y"]),
    ("last_k", ["a1", "b2", "c3", "d4"], 3, ["b2", "c3", "d4"]),
    ("drop_first_k", ["a1", "b2", "c3"], 1, ["b2", "c3"]),
    ("drop_first_k", ["a1", "b2"], 3, []),
    ("every_second", ["a", "b", "c", "d", "e"], None, ["a", "c", "e"]),
    ("dedupe", ["fox", "7", "fox", "7", "owl"], None, ["fox", "7", "owl"]),
    ("count", ["fox", "owl", "fox"], None, "3"),
    ("count", [], None, "0"),
    ("max", ["8", "42", "17"], None, "42"),
    ("max", [], None, EMPTY_LIST),
    ("min", ["8", "42", "17"], None, "8"),
    ("above", ["50", "51", "7", "99"], 50, ["51", "99"]),
    ("contains", ["fox", "owl"], "owl", "yes"),
    ("contains", ["fox", "owls"], "owl", "no"),
    ("is_sorted", ["3", "3", "10"], None, "yes"),
    ("is_sorted", ["3", "10", "9"], None, "no"),
    ("is_sorted", ["3"], None, "yes"),
]


@pytest.mark.parametrize(("name", "items", "param", "expected"), HAND_CASES)
def test_primitive_apply_by_hand(name: str, items: list[str], param: object, expected: object) -> None:
    assert PRIMITIVES_BY_NAME[name].apply(items, param) == expected


def test_every_primitive_is_covered_by_hand_examples() -> None:
    assert {case[0] for case in HAND_CASES} == set(PRIMITIVES_BY_NAME)


def _dedupe(xs: list[str]) -> list[str]:
    kept: list[str] = []
    for x in xs:
        if x not in kept:
            kept.append(x)
    return kept


def _numbers(xs: list[str]) -> list[int]:
    return [int(x) for x in xs]


# The primitives written again from their wording, without training.world, so that a reference
# output is checked by code other than the code that made it.
ORACLE = {
    "reverse": lambda xs, _: list(reversed(xs)),
    "sort_asc": lambda xs, _: [str(n) for n in sorted(_numbers(xs))],
    "sort_desc": lambda xs, _: [str(n) for n in sorted(_numbers(xs), reverse=True)],
    "first_k": lambda xs, k: [x for i, x in enumerate(xs) if i < k],
    "last_k": lambda xs, k: [x for i, x in enumerate(xs) if i >= len(xs) - k],
    "drop_first_k": lambda xs, k: [x for i, x in enumerate(xs) if i >= k],
    "every_second": lambda xs, _: [x for i, x in enumerate(xs) if i % 2 == 0],
    "dedupe": lambda xs, _: _dedupe(xs),
    "count": lambda xs, _: str(len(xs)),
    "max": lambda xs, _: str(max(_numbers(xs))) if xs else "none",
    "min": lambda xs, _: str(min(_numbers(xs))) if xs else "none",
    "above": lambda xs, n: [x for x in xs if int(x) > n],
    "contains": lambda xs, word: "yes" if word in xs else "no",
    "is_sorted": lambda xs, _: "yes" if _numbers(xs) == sorted(_numbers(xs)) else "no",
}


def oracle(function: tuple[FunctionStep, ...], text: str) -> str:
    """The reference output of a declared function on an input text, from ORACLE alone."""
    value: list[str] | str = [] if text == "none" else text.split(", ")
    for name, param in function:
        assert isinstance(value, list), f"{name} after a non-list step"
        value = ORACLE[name](value, param)
    return value if isinstance(value, str) else (", ".join(value) or "none")


COMPOSITION_CASES = [
    ((("reverse", None), ("first_k", 2)), "a, b, c", "c, b"),
    ((("first_k", 3), ("reverse", None)), "a, b, c, d", "c, b, a"),
    ((("sort_desc", None), ("first_k", 1)), "3, 10, 7", "10"),
    ((("dedupe", None), ("count", None)), "fox, owl, fox", "2"),
    ((("drop_first_k", 1), ("max", None)), "99, 5, 42", "42"),
    ((("above", 50), ("sort_asc", None)), "75, 12, 51", "51, 75"),
    ((("above", 50), ("max", None)), "10, 20", "none"),
    ((("every_second", None), ("contains", "owl")), "owl, fox, cat", "yes"),
    ((("every_second", None), ("contains", "owl")), "fox, owl", "no"),
    ((("last_k", 2), ("is_sorted", None)), "9, 1, 5", "yes"),
    ((("sort_asc", None), ("last_k", 1)), "4, 80, 16", "80"),
    ((("reverse", None), ("drop_first_k", 3)), "a, b", "none"),
]


@pytest.mark.parametrize(("function", "text", "expected"), COMPOSITION_CASES)
def test_compositions_by_hand(function: tuple[FunctionStep, ...], text: str, expected: str) -> None:
    assert oracle(function, text) == expected
    steps = [Step(name, param, 0) for name, param in function]
    assert format_result(run_steps(steps, parse_list(text))) == expected


@pytest.mark.parametrize(("name", "items", "param", "expected"), HAND_CASES)
def test_oracle_agrees_with_the_hand_cases(name: str, items: list[str], param: object, expected: object) -> None:
    assert oracle(((name, param),), format_list(items)) == format_result(expected)


def test_apply_checks_parameter_presence() -> None:
    with pytest.raises(ValueError, match="first_k"):
        PRIMITIVES_BY_NAME["first_k"].apply(["a"], None)
    with pytest.raises(ValueError, match="reverse"):
        PRIMITIVES_BY_NAME["reverse"].apply(["a"], 2)


def test_list_text_round_trip() -> None:
    assert format_list([]) == EMPTY_LIST and parse_list(EMPTY_LIST) == []
    assert format_list(["apple", "7", "river"]) == "apple, 7, river"
    assert parse_list("apple, 7, river") == ["apple", "7", "river"]
    assert format_result("yes") == "yes" and format_result(["a", "b"]) == "a, b"


def test_descriptions_fill_parameters_and_compose() -> None:
    first_k = PRIMITIVES_BY_NAME["first_k"]
    assert first_k.describe(1, 0) == "Keep only the first 1 item of the list."
    assert first_k.describe(3, 0) == "Keep only the first 3 items of the list."
    above = PRIMITIVES_BY_NAME["above"]
    assert above.describe(50, 0) == "Keep only the numbers greater than 50."
    steps = (Step("reverse", None, 0), Step("first_k", 2, 0))
    assert describe_steps(steps) == ("Reverse the order of the items in the list, then keep only the first 2 items of the list.")
    assert run_steps(steps, ["a", "b", "c"]) == ["c", "b"]


def test_composable_requires_a_list_the_second_step_can_read() -> None:
    by = PRIMITIVES_BY_NAME
    assert composable(by["reverse"], by["first_k"])
    assert not composable(by["count"], by["reverse"])  # count yields a number
    assert not composable(by["sort_asc"], by["contains"])  # numbers vs words
    assert not composable(by["reverse"], by["reverse"])
    with pytest.raises(ValueError, match="needs a list"):
        run_steps((Step("count", None, 0), Step("reverse", None, 0)), ["a"])


# --------------------------------------------------------------------------
# Suite contents


def test_suite_shape(suite: Suite) -> None:
    sizes = {name: len(tasks) for name, tasks in suite.splits().items()}
    assert list(sizes) == list(SPLITS)
    assert sizes["train"] >= 60 and all(sizes.values())
    singles = [t for t in suite.train if len(t.steps) == 1]
    pairs = [t for t in suite.train if len(t.steps) == 2]
    assert {t.steps[0].primitive for t in singles} == set(PRIMITIVES_BY_NAME)
    assert len(pairs) == suite.config.train_compositions
    assert len(suite.unseen_composition) == suite.config.unseen_compositions
    assert all(len(t.steps) == 2 for t in suite.unseen_composition)
    assert {t.steps[0].primitive for t in suite.unseen_paraphrase} == set(PRIMITIVES_BY_NAME)


def test_names_ids_and_counts(suite: Suite) -> None:
    tasks = _all(suite)
    assert len({t.task.name for t in tasks}) == len(tasks)
    ids = [i.id for t in tasks for i in t.task.instances]
    assert len(set(ids)) == len(ids)
    for t in tasks:
        assert t.task.name.startswith(f"synth_{t.split}_")
        expected = suite.config.train_instances if t.split == "train" else suite.config.test_instances
        assert len(t.task.instances) == expected
        inputs = [i.input for i in t.task.instances]
        assert len(set(inputs)) == len(inputs), t.task.name
        assert len(t.task.positive_examples) == 2
        assert len({e.output for e in t.task.positive_examples}) == 2, t.task.name  # varied answers
        assert not {e.input for e in t.task.positive_examples} & set(inputs)


def test_every_reference_output_is_the_function_of_its_input(suite: Suite) -> None:
    for t in _all(suite):
        assert t.task.function == tuple((s.primitive, s.param) for s in t.steps), t.task.name
        pairs = [(i.input, i.outputs) for i in t.task.instances]
        pairs += [(e.input, (e.output,)) for e in t.task.positive_examples]
        for text, outputs in pairs:
            items = parse_list(text)
            assert suite.config.min_items <= len(items) <= suite.config.max_items
            assert outputs == (oracle(t.task.function, text),), t.task.name


def test_definitions_and_categories_follow_steps(suite: Suite) -> None:
    natural = {(tuple(s.function for s in steps), text) for steps, text in read_natural_wordings()}
    for t in _all(suite):
        if t.split == "natural_wording":  # the everyday wording from the file, not a template
            assert (t.task.function, t.task.definition) in natural and t.task.paraphrases == ()
        else:
            assert t.task.definition == describe_steps(t.steps)
        names = [s.primitive for s in t.steps]
        expected = names[0] if len(names) == 1 else f"composition:{names[0]}+{names[1]}"
        assert t.task.categories == (expected,)


def test_inputs_suit_every_step(suite: Suite) -> None:
    for t in _all(suite):
        needs_numbers = any(PRIMITIVES_BY_NAME[s.primitive].domain == {"number"} for s in t.steps)
        needs_words = any(PRIMITIVES_BY_NAME[s.primitive].domain == {"word"} for s in t.steps)
        # training inputs mix in made-up words; the unseen-words split uses real words never trained on
        known = {"train": _is_made_up, "unseen_words": lambda i: i in UNSEEN_ITEM_WORDS}.get(t.split, lambda i: False)
        for instance in t.task.instances:
            items = parse_list(instance.input)
            if needs_numbers:
                assert all(i.isdigit() and 0 <= int(i) <= 99 for i in items), t.task.name
            if needs_words:
                assert all(i in VOCABULARY or known(i) for i in items), t.task.name


def _is_made_up(item: str) -> bool:
    return item.isalpha() and item.islower() and item not in VOCABULARY and item not in UNSEEN_ITEM_WORDS


def test_word_items_are_partly_made_up_in_training_and_unseen_in_the_unseen_words_split(suite: Suite) -> None:
    def word_items(tasks: tuple[SynthTask, ...]) -> list[str]:
        return [i for t in tasks for inst in t.task.instances for i in parse_list(inst.input) if not i.isdigit()]

    train = word_items(suite.train)
    share = sum(map(_is_made_up, train)) / len(train)
    assert 0.08 < share < 0.25, share  # SuiteConfig.novel_word_share is 0.15
    for split in ("unseen_composition", "unseen_parameter", "unseen_paraphrase", "natural_wording"):
        assert all(i in VOCABULARY for i in word_items(suite.splits()[split])), split
    unseen = word_items(suite.unseen_words)
    planted = {str(s.param) for t in suite.unseen_words for s in t.steps if s.primitive == "contains"}
    assert unseen and all(i in UNSEEN_ITEM_WORDS or i in planted for i in unseen)
    assert len(set(unseen) & set(UNSEEN_ITEM_WORDS)) >= 30  # the words vary, not one repeated
    assert {t.task.function for t in suite.unseen_words} <= {t.task.function for t in suite.train}
    # every training function that reads words has a task there
    reads_words = {
        t.task.function for t in suite.train if len(t.steps) == 1 and "word" in PRIMITIVES_BY_NAME[t.steps[0].primitive].domain
    }
    assert {t.task.function for t in suite.unseen_words} == reads_words


def test_answers_are_varied_and_yes_no_balanced(suite: Suite) -> None:
    for t in _all(suite):
        counts = Counter(i.outputs[0] for i in t.task.instances)
        assert len(counts) >= 2, t.task.name
        majority = counts.most_common(1)[0][1]
        # The everyday-wordings file names its functions (e.g. "remove the first three items" of a
        # 2-4 item list is mostly "none"); every planned split is chosen to vary.
        if t.split != "natural_wording":
            assert majority <= 0.7 * len(t.task.instances), (t.task.name, counts.most_common(2))
        if PRIMITIVES_BY_NAME[t.steps[-1].primitive].output == "yesno":
            assert set(counts) == {"yes", "no"}
            assert abs(counts["yes"] - counts["no"]) <= 0.1 * len(t.task.instances), t.task.name


# --------------------------------------------------------------------------
# No leakage from held-out splits into training


def test_unseen_compositions_never_appear_together_in_training(suite: Suite) -> None:
    train_pairs = [_pair(t) for t in suite.train if len(t.steps) == 2]
    together = {frozenset(p) for p in train_pairs}
    firsts, seconds = {a for a, _ in train_pairs}, {b for _, b in train_pairs}
    for t in suite.unseen_composition:
        a, b = _pair(t)
        assert frozenset((a, b)) not in together, t.task.name
        assert a in firsts and b in seconds, t.task.name  # each role was seen in training
        for step in t.steps:
            primitive = PRIMITIVES_BY_NAME[step.primitive]
            assert step.template in primitive.train_templates
            assert primitive.param_name is None or step.param in primitive.train_values


def test_unseen_parameters_never_appear_in_training(suite: Suite) -> None:
    train_functions = {s.function for s in _train_steps(suite)}
    held_values = {(p.name, v) for p in PRIMITIVES for v in p.held_out_values}
    assert not train_functions & held_values
    parameterised = {p.name for p in PRIMITIVES if p.param_name}
    assert parameterised == {t.steps[0].primitive for t in suite.unseen_parameter}
    for t in suite.unseen_parameter:
        (step,) = t.steps
        assert step.function not in train_functions, t.task.name
        assert step.function in held_values
        assert step.template in PRIMITIVES_BY_NAME[step.primitive].train_templates


def test_unseen_paraphrases_use_templates_held_out_from_all_training(suite: Suite) -> None:
    used = {(s.primitive, s.template) for s in _train_steps(suite)}
    assert all((p.name, p.held_out_template) not in used for p in PRIMITIVES)
    train_single_functions = {t.steps[0].function for t in suite.train if len(t.steps) == 1}
    for t in suite.unseen_paraphrase:
        (step,) = t.steps
        assert step.template == PRIMITIVES_BY_NAME[step.primitive].held_out_template
        assert step.function in train_single_functions, t.task.name  # only the wording is new


def test_no_held_out_definition_is_a_training_definition(suite: Suite) -> None:
    train_definitions = {t.task.definition for t in suite.train}
    for name in SPLITS[1:]:
        assert not {t.task.definition for t in suite.splits()[name]} & train_definitions


# --------------------------------------------------------------------------
# Determinism, files and corpus


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_other_seed_differs(suite: Suite, tmp_path: Path) -> None:
    again, other = build_suite(SEED), build_suite(SEED + 1)
    for directory, built in (("a", suite), ("b", again), ("c", other)):
        write_suite(built, tmp_path / directory)
    a, b, c = (_snapshot(tmp_path / d) for d in "abc")
    assert a == b
    assert a != c
    assert [t.task.definition for t in other.train] != [t.task.definition for t in suite.train]


def test_written_suite_loads_with_the_sni_loader(suite: Suite, tmp_path: Path) -> None:
    write_suite(suite, tmp_path)
    assert not list(tmp_path.rglob("*.tmp"))
    for name, tasks in suite.splits().items():
        listed = read_split(tmp_path / "splits" / f"{name}.txt")
        assert listed == [t.task.name for t in tasks]
        assert load_tasks([tmp_path / name]) == sorted((t.task for t in tasks), key=lambda task: task.name)
    one = suite.train[0].task
    assert load_task(tmp_path / "train" / f"{one.name}.json") == one
    assert len(load_tasks([tmp_path / "unseen_parameter"])) == len(suite.unseen_parameter)
    prompt = format_instruction(one, "def+2pos")
    assert "Positive Example 2 -" in prompt and one.definition in prompt


def test_task_files_declare_their_function_and_stages_read_it_back(suite: Suite, tmp_path: Path) -> None:
    write_suite(suite, tmp_path)
    for t in _all(suite):
        loaded = load_task(tmp_path / t.split / f"{t.task.name}.json")
        assert [s.function for s in steps_of(loaded)] == [s.function for s in t.steps], t.task.name
    # Renaming the file changes nothing: the function is read from the file, not its name.
    renamed = tmp_path / "renamed.json"
    renamed.write_bytes((tmp_path / "train" / f"{suite.train[-1].task.name}.json").read_bytes())
    assert [s.function for s in steps_of(load_task(renamed))] == [s.function for s in suite.train[-1].steps]
    by_key: dict[str, set[tuple]] = {}
    for t in suite.train:
        by_key.setdefault(t.task.function_key, set()).add(t.task.function)
    assert all(len(functions) == 1 for functions in by_key.values())  # one key, one function
    # one task per function by default; its wordings travel in the file with it
    for t in suite.train:
        loaded = load_task(tmp_path / "train" / f"{t.task.name}.json")
        assert loaded.paraphrases == t.task.paraphrases and len(loaded.wordings) >= 10, t.task.name


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (None, "declares no list-world function"),
        ((("frobnicate", None),), "names no list-world primitive"),
        ((("first_k", None),), "'first_k' given parameter None"),
        ((("reverse", 2),), "'reverse' given parameter 2"),
        ((("count", None), ("nothing", None)), "'nothing' names no"),
    ],
)
def test_bad_declared_functions_are_refused(function: tuple[FunctionStep, ...] | None, message: str) -> None:
    task = Task("t", "d", (), (), (), ("c",), function)
    with pytest.raises(ValueError, match=message):
        steps_of(task)


def test_write_suite_is_repeatable_but_refuses_foreign_task_files(suite: Suite, tmp_path: Path) -> None:
    write_suite(suite, tmp_path)
    write_suite(suite, tmp_path)  # the same suite again is fine
    (tmp_path / "train" / "stray.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="stray.json"):
        write_suite(suite, tmp_path)


def test_corpus_texts_cover_training_and_keep_held_out_wording_out(suite: Suite) -> None:
    texts = corpus_texts(suite)
    assert len(texts) == len(set(texts))
    present = set(texts)
    for t in suite.train:
        assert t.task.definition in present
        assert all(i.input in present and i.outputs[0] in present for i in t.task.instances)
    held_definitions = {t.task.definition for t in suite.unseen_paraphrase}
    assert not held_definitions & present
    assert held_definitions <= set(corpus_texts(suite, include_held_out=True))


@pytest.mark.parametrize(
    "changes",
    [{"min_items": 0}, {"min_items": 4, "max_items": 3}, {"train_instances": 0}, {"train_compositions": -1}],
)
def test_suite_config_rejects_nonsense(changes: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        SuiteConfig(**changes)


def _normalised(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def test_the_everyday_wordings_are_held_out_and_cover_every_primitive(suite: Suite) -> None:
    natural = read_natural_wordings()
    assert len(natural) >= 100
    assert {steps[0].primitive for steps, _ in natural if len(steps) == 1} == set(PRIMITIVES_BY_NAME)
    trained = {_normalised(w) for t in suite.train for w in t.task.wordings}
    trained |= {_normalised(p.describe(v, i)) for p in PRIMITIVES for i in p.train_templates for v in (p.train_values or (None,))}
    leaked = [text for _, text in natural if _normalised(text) in trained]
    assert leaked == []
    assert len(suite.natural_wording) == len(natural)


def test_a_malformed_everyday_wordings_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "wordings.jsonl"
    path.write_text(
        '{"instruction": "flip it", "function": [["reverse", null]]}\n{"instruction": "x", "function": [["frob", null]]}\n'
    )
    with pytest.raises(ValueError, match=r"wordings.jsonl:2: 'frob'"):
        read_natural_wordings(path)
    path.write_text('{"instruction": "flip it"}\n')
    with pytest.raises(ValueError, match=r"wordings.jsonl:1: not an"):
        read_natural_wordings(path)
