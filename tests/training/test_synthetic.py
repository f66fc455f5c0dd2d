"""Tests for the list world (training.world), suite planning (training.suite) and its files
(training.suite_files): primitives, suite construction, leak-freedom, declared functions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from training.data import FunctionStep, Task, format_instruction, load_task, load_tasks, read_split
from training.suite import SPLITS, Suite, SuiteConfig, SynthTask, build_suite, corpus_texts
from training.suite_files import write_suite
from training.world import (
    EMPTY_LIST,
    PRIMITIVES,
    PRIMITIVES_BY_NAME,
    VOCABULARY,
    Step,
    composable,
    describe_steps,
    format_list,
    format_result,
    parse_list,
    run_steps,
    steps_of,
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


def test_primitive_inventory() -> None:
    assert len(PRIMITIVES) >= 12
    assert len(PRIMITIVES_BY_NAME) == len(PRIMITIVES)
    for p in PRIMITIVES:
        assert len(p.templates) >= 5 and len(set(p.templates)) == len(p.templates), p.name
        assert p.held_out_template not in p.train_templates
        for template in p.templates:
            assert template[0].isupper() and template.endswith("."), template
            if p.param_name:
                assert "{" + p.param_name + "}" in template, template
        if p.param_name:
            assert p.train_values and p.held_out_values
            assert not set(p.train_values) & set(p.held_out_values), p.name
        else:
            assert not p.train_values and not p.held_out_values


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
    for t in _all(suite):
        assert t.task.definition == describe_steps(t.steps)
        names = [s.primitive for s in t.steps]
        expected = names[0] if len(names) == 1 else f"composition:{names[0]}+{names[1]}"
        assert t.task.categories == (expected,)


def test_inputs_suit_every_step(suite: Suite) -> None:
    for t in _all(suite):
        needs_numbers = any(PRIMITIVES_BY_NAME[s.primitive].domain == {"number"} for s in t.steps)
        needs_words = any(PRIMITIVES_BY_NAME[s.primitive].domain == {"word"} for s in t.steps)
        for instance in t.task.instances:
            items = parse_list(instance.input)
            if needs_numbers:
                assert all(i.isdigit() and 0 <= int(i) <= 99 for i in items), t.task.name
            if needs_words:
                assert all(i in VOCABULARY for i in items), t.task.name


def test_answers_are_varied_and_yes_no_balanced(suite: Suite) -> None:
    for t in _all(suite):
        counts = Counter(i.outputs[0] for i in t.task.instances)
        assert len(counts) >= 2, t.task.name
        majority = counts.most_common(1)[0][1]
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
    assert len(by_key) < len(suite.train)  # paraphrases of a function share it


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
