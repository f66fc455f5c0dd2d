"""Super-Natural Instructions (SNI) task loading, prompt layouts and metrics.

Everything that knows the SNI file schema or the Tk-Instruct prompt layout
lives here, so the synthetic suite, training and evaluation cannot drift
apart on how a task is read, shown to a model, or scored.

The schema has one addition of ours, ``"tagi_function"``: a synthetic task
names the function it computes (``{"steps": [{"primitive": ..., "param": ...}]}``)
so that stages group and re-sample tasks by what they compute, not by parsing
file names. SNI's own tasks lack it; each of them is its own function.
"""

from __future__ import annotations

import functools
import json
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer

SNI_DIR = Path(__file__).resolve().parents[1] / "data" / "sni"
"""The SNI subset shipped with the repository (see its README for source and license)."""

PromptFormat = Literal["def", "def+2pos"]
PROMPT_FORMATS: tuple[PromptFormat, ...] = ("def", "def+2pos")

# Prompt layouts (Tk-Instruct's textual layout), kept together so that the
# teacher, the student and the baselines all see byte-identical framing.
DEFINITION_TEMPLATE = "Definition: {definition}"
POSITIVE_EXAMPLE_TEMPLATE = "Positive Example {index} -\nInput: {input}\nOutput: {output}"
SECTION_SEPARATOR = "\n\n"
CONCAT_TEMPLATE = "{instruction}\n\nNow complete the following example -\nInput: {input}\nOutput:"
POSITIVE_EXAMPLES_IN_PROMPT = 2
TK_TEST_INSTANCES = 100
"""Tk-Instruct scores the first 100 instances of each test task (and caps training tasks at 100)."""


@dataclass(frozen=True)
class Example:
    input: str
    output: str
    explanation: str


@dataclass(frozen=True)
class Instance:
    id: str
    input: str
    outputs: tuple[str, ...]


FUNCTION_FIELD = "tagi_function"
PARAPHRASES_FIELD = "tagi_paraphrases"
"""Other wordings of a task's definition that training may show the generator in its place
(synthetic tasks: many frames around the words that decide the task). Evaluation uses the
definition itself."""
STEP_JOIN = "_then_"
"""Joins the steps of a composition in function keys (and so in teacher and task names)."""

Param = int | str | None
FunctionStep = tuple[str, Param]
"""One step of a declared task function: (primitive name, parameter or None)."""


def function_key(function: Sequence[FunctionStep]) -> str:
    """A function as a file-name-safe text: [("first_k", 3), ("reverse", None)] -> "first_k_3_then_reverse"."""
    return STEP_JOIN.join(name if param is None else f"{name}_{param}" for name, param in function)


@dataclass(frozen=True)
class Task:
    name: str
    definition: str
    positive_examples: tuple[Example, ...]
    negative_examples: tuple[Example, ...]
    instances: tuple[Instance, ...]
    categories: tuple[str, ...]
    function: tuple[FunctionStep, ...] | None = None
    """What the task computes, when its file declares it (synthetic tasks); None for SNI tasks."""
    paraphrases: tuple[str, ...] = ()
    """Training-only alternative wordings of `definition` (PARAPHRASES_FIELD); empty for SNI tasks."""

    @property
    def wordings(self) -> tuple[str, ...]:
        """The definition, then its paraphrases: what training samples an instruction from."""
        return (self.definition, *self.paraphrases)

    @property
    def category(self) -> str:
        """SNI tasks carry one category in practice; reports group by it."""
        return self.categories[0]

    @property
    def function_key(self) -> str:
        """Tasks that differ only in wording share this key; a task without a declared function is its own."""
        return self.name if self.function is None else function_key(self.function)


# --------------------------------------------------------------------------
# Loading


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


def _read_json(path: Path) -> object:
    """Strict JSON: NaN/Infinity would silently poison metrics downstream."""
    if not path.is_file():
        raise ValueError(f"task file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not valid UTF-8 ({err})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def _field(obj: dict[str, object], key: str, where: str) -> object:
    if key not in obj:
        raise ValueError(f"{where}: missing required key {key!r}")
    return obj[key]


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _list(value: object, where: str, *, non_empty: bool = False) -> list[object]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    if non_empty and not value:
        raise ValueError(f"{where}: expected a non-empty list")
    return value


def _object(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _strings(value: object, where: str, *, non_empty: bool = False) -> tuple[str, ...]:
    items = _list(value, where, non_empty=non_empty)
    return tuple(_string(item, f"{where}[{i}]") for i, item in enumerate(items))


def _examples(data: dict[str, object], key: str, where: str) -> tuple[Example, ...]:
    examples = []
    for i, raw in enumerate(_list(_field(data, key, where), f"{where} {key!r}")):
        at = f"{where} {key!r}[{i}]"
        obj = _object(raw, at)
        # Some SNI examples omit the explanation; it is never shown in prompts.
        explanation = _string(obj.get("explanation", ""), f"{at}.explanation")
        examples.append(
            Example(
                input=_string(_field(obj, "input", at), f"{at}.input"),
                output=_string(_field(obj, "output", at), f"{at}.output"),
                explanation=explanation,
            )
        )
    return tuple(examples)


def _instances(data: dict[str, object], where: str, max_instances: int | None) -> tuple[Instance, ...]:
    raw_instances = _list(_field(data, "Instances", where), f"{where} 'Instances'")
    if max_instances is not None:
        raw_instances = raw_instances[:max_instances]
    instances = []
    seen_ids: set[str] = set()
    for i, raw in enumerate(raw_instances):
        at = f"{where} 'Instances'[{i}]"
        obj = _object(raw, at)
        instance = Instance(
            id=_string(_field(obj, "id", at), f"{at}.id"),
            input=_string(_field(obj, "input", at), f"{at}.input"),
            outputs=_strings(_field(obj, "output", at), f"{at}.output", non_empty=True),
        )
        if instance.id in seen_ids:
            raise ValueError(f"{at}: duplicate instance id {instance.id!r}")
        seen_ids.add(instance.id)
        instances.append(instance)
    return tuple(instances)


def _function(data: dict[str, object], where: str) -> tuple[FunctionStep, ...] | None:
    if FUNCTION_FIELD not in data:
        return None
    at = f"{where} {FUNCTION_FIELD!r}"
    steps = _list(_field(_object(data[FUNCTION_FIELD], at), "steps", at), f"{at}.steps", non_empty=True)
    function = []
    for i, raw in enumerate(steps):
        step_at = f"{at}.steps[{i}]"
        obj = _object(raw, step_at)
        param = obj.get("param")
        if param is not None and (isinstance(param, bool) or not isinstance(param, (int, str))):
            raise ValueError(f"{step_at}.param: expected an int, a string or null, got {type(param).__name__}")
        function.append((_string(_field(obj, "primitive", step_at), f"{step_at}.primitive"), param))
    return tuple(function)


def _check_max_instances(max_instances: int | None) -> None:
    if max_instances is not None and (isinstance(max_instances, bool) or max_instances < 0):
        raise ValueError(f"max_instances must be None or a non-negative int, got {max_instances!r}")


def load_task(path: str | Path, max_instances: int | None = None) -> Task:
    """Read one SNI task file; the task is named after the file stem.

    ``max_instances`` keeps the first instances in file order, matching the
    SNI evaluation convention of a fixed per-task prefix.
    """
    _check_max_instances(max_instances)
    path = Path(path)
    data = _object(_read_json(path), str(path))
    where = str(path)
    definition_parts = _strings(_field(data, "Definition", where), f"{where} 'Definition'", non_empty=True)
    return Task(
        name=path.stem,
        definition="\n".join(part.strip() for part in definition_parts),
        positive_examples=_examples(data, "Positive Examples", where),
        negative_examples=_examples(data, "Negative Examples", where),
        instances=_instances(data, where, max_instances),
        categories=_strings(_field(data, "Categories", where), f"{where} 'Categories'", non_empty=True),
        function=_function(data, where),
        paraphrases=_strings(data.get(PARAPHRASES_FIELD, []), f"{where} {PARAPHRASES_FIELD!r}", non_empty=False),
    )


def task_to_dict(task: Task) -> dict[str, object]:
    """Inverse of :func:`load_task` for the keys it reads (name is the file stem)."""

    def example(e: Example) -> dict[str, str]:
        return {"input": e.input, "output": e.output, "explanation": e.explanation}

    document: dict[str, object] = {
        "Categories": list(task.categories),
        "Definition": [task.definition],
        "Positive Examples": [example(e) for e in task.positive_examples],
        "Negative Examples": [example(e) for e in task.negative_examples],
        "Instances": [{"id": i.id, "input": i.input, "output": list(i.outputs)} for i in task.instances],
    }
    if task.paraphrases:
        document[PARAPHRASES_FIELD] = list(task.paraphrases)
    if task.function is not None:
        document[FUNCTION_FIELD] = {"steps": [{"primitive": name, "param": param} for name, param in task.function]}
    return document


def read_split(split_file: str | Path) -> list[str]:
    """Task names listed in a split file, in file order, blank lines ignored."""
    split_file = Path(split_file)
    if not split_file.is_file():
        raise ValueError(f"split file not found: {split_file}")
    names = [line.strip() for line in split_file.read_text(encoding="utf-8").splitlines()]
    return list(dict.fromkeys(name for name in names if name))


def load_tasks(paths: Sequence[str | Path], max_instances: int | None = None) -> list[Task]:
    """Tasks from files and/or directories of ``*.json`` files (sorted per directory).

    Duplicate task names are an error: scoring a task twice would silently
    overweight it in aggregated metrics.
    """
    _check_max_instances(max_instances)
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise ValueError(f"no task files (*.json) in directory: {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"task file or directory not found: {path}")
    tasks = [load_task(f, max_instances) for f in files]
    seen: dict[str, Path] = {}
    for task, f in zip(tasks, files):
        if task.name in seen:
            raise ValueError(f"task {task.name!r} given twice: {seen[task.name]} and {f}")
        seen[task.name] = f
    return tasks


# --------------------------------------------------------------------------
# Prompts


def instruction_text(task: Task, fmt: PromptFormat) -> str:
    """A task's instruction in one of the two SNI standard formats, without the leading
    "Definition: " label: the definition, then (``def+2pos``) its first two positive examples.

    This is what a TAGI checkpoint is given: its ``instruction_template`` adds the label, so
    the generator sees exactly :func:`format_instruction`'s prompt. Like Tk-Instruct,
    ``def+2pos`` uses up to two positive examples, so a task with fewer still gets a prompt
    instead of failing mid-evaluation.
    """
    if fmt not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; expected one of {PROMPT_FORMATS}")
    sections = [task.definition.strip()]
    if fmt == "def+2pos":
        for index, example in enumerate(task.positive_examples[:POSITIVE_EXAMPLES_IN_PROMPT], start=1):
            sections.append(
                POSITIVE_EXAMPLE_TEMPLATE.format(index=index, input=example.input.strip(), output=example.output.strip())
            )
    return SECTION_SEPARATOR.join(sections)


def label_definition(text: str) -> str:
    """SNI's labelled prompt of an instruction text (the form the concatenation baselines read)."""
    return DEFINITION_TEMPLATE.format(definition=text)


def format_instruction(task: Task, fmt: PromptFormat) -> str:
    """Instruction text in one of the two SNI standard formats (Tk-Instruct's prompt)."""
    return label_definition(instruction_text(task, fmt))


def format_concat(instruction: str, input: str) -> str:
    """Model input with the instruction prepended (the Tk-Instruct baseline)."""
    return CONCAT_TEMPLATE.format(instruction=instruction, input=input.strip())


# --------------------------------------------------------------------------
# Held-out instances


def split_instances(task: Task, held_out: int | float, seed: int) -> tuple[tuple[Instance, ...], tuple[Instance, ...]]:
    """Deterministically split a task's instances into (train, held_out).

    ``held_out`` is a count (int) or a fraction in (0, 1) (float). The shuffle
    is seeded by ``seed`` and the task name, so tasks get independent splits
    while the same seed always reproduces them. Both parts keep file order.
    """
    n = len(task.instances)
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)):
        raise ValueError(f"held_out must be an int count or a float fraction, got {held_out!r}")
    if isinstance(held_out, float):
        if not 0.0 < held_out < 1.0:
            raise ValueError(f"held_out fraction must be in (0, 1), got {held_out}")
        count = round(held_out * n)
    else:
        if not 0 <= held_out <= n:
            raise ValueError(f"held_out count must be in [0, {n}] for task {task.name!r}, got {held_out}")
        count = held_out
    order = list(range(n))
    random.Random(f"{seed}:{task.name}").shuffle(order)
    held = set(order[:count])
    train = tuple(inst for i, inst in enumerate(task.instances) if i not in held)
    held_part = tuple(inst for i, inst in enumerate(task.instances) if i in held)
    return train, held_part


# --------------------------------------------------------------------------
# Metrics: the definitions of Tk-Instruct's compute_metrics.py, the script behind SNI's published
# tables, so our numbers compare with the paper's. Articles are kept (SQuAD drops them; SNI's
# script does not), and Rouge-L is the `rouge-score` package's, stemmed, on the raw strings.

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SNI's exact-match normalisation: lowercase, drop ASCII punctuation, collapse whitespace."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def _as_references(references: str | Sequence[str]) -> tuple[str, ...]:
    # A bare string is a Sequence[str] too; iterating it would score characters.
    refs = (references,) if isinstance(references, str) else tuple(references)
    if not refs:
        raise ValueError("at least one reference is required")
    return refs


@functools.cache
def _rouge_scorer() -> RougeScorer:
    """Built on first use, once: importing rouge_score (nltk) and building its stemmer takes about a
    second, which every importer of this module would otherwise pay."""
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """Rouge-L F-measure of rouge_score (its tokenizer, Porter stemming) on the raw strings, best over references."""
    scorer = _rouge_scorer()
    return max(scorer.score(target=ref, prediction=prediction)["rougeL"].fmeasure for ref in _as_references(references))


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in _as_references(references)))
