"""Stage 0's data: coded list-world skills (no held-out value, no held-back input, correct
outputs) and a tokenizer that keeps instruction words and list items whole."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from hypernet.tiny import TinyPreset, load_tokenizer
from training.base_pretrain import PRIMITIVE_INDEX, WorldSkills, build_base, skill_code
from training.common import load_task_set
from training.data import STEP_JOIN, format_concat
from training.pipeline import write_synthetic
from training.presets import BaseConfig
from training.suite import SuiteConfig
from training.world import PRIMITIVES_BY_NAME, Step, parse_list, run_steps, steps_of

SUITE = {"train_instances": 30, "test_instances": 4, "train_compositions": 12, "unseen_compositions": 3}


@pytest.fixture(scope="module")
def task_set(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("data")
    write_synthetic(data, 0, SuiteConfig(**SUITE))
    return load_task_set([str(data / "train")], held_back=5, seed=0)


def _decode(source: str) -> tuple[list[tuple[str, object]], list[str]]:
    """'<skill_3> 1 <skill_0> : a, b' -> ([("first_k", 1), ("reverse", None)], ["a", "b"])."""
    head, items = source.split(" : ", 1)
    by_code = {skill_code(i): name for name, i in PRIMITIVE_INDEX.items()}
    steps: list[tuple[str, object]] = []
    for token in head.split():
        if token in by_code:
            steps.append((by_code[token], None))
        else:
            name, _ = steps[-1]
            steps[-1] = (name, int(token) if token.isdigit() else token)
    return steps, parse_list(items)


def test_world_skills_are_correct_and_never_leak(task_set):
    world = WorldSkills(task_set, SuiteConfig(**SUITE))
    held_back = {p.input for p in task_set.held_back}
    rng = random.Random(0)
    seen_params: dict[str, set] = {}
    for _ in range(3000):
        task = rng.randrange(len(task_set.tasks))
        source, target = world.sample(rng, task)
        steps, items = _decode(source)
        expected = [s.primitive for s in steps_of(task_set.tasks[task])]
        assert [name for name, _ in steps] == expected  # the task's own function, in order
        for name, param in steps:
            primitive = PRIMITIVES_BY_NAME[name]
            assert param is None or param in primitive.train_values
            assert param not in primitive.held_out_values
            seen_params.setdefault(name, set()).add(param)
        assert ", ".join(items) not in held_back
        result = run_steps([Step(n, p, 0) for n, p in steps], items)
        assert target == (result if isinstance(result, str) else (", ".join(result) or "none"))
    # contains is trained with many words, not only the few of the training tasks
    assert len(seen_params.get("contains", set())) > 20


def test_coded_probe_uses_the_tasks_own_parameters(task_set):
    world = WorldSkills(task_set, SuiteConfig(**SUITE))
    for index, task in enumerate(task_set.tasks):
        steps, _ = _decode(world.coded(index, "apple, pear"))
        assert [(n, p) for n, p in steps] == [(s.primitive, s.param) for s in steps_of(task)]
        assert STEP_JOIN not in world.coded(index, "x")


def test_tokenizer_keeps_prompt_words_and_items_whole(task_set, tmp_path: Path):
    build_base(
        task_set,
        tmp_path,
        BaseConfig(model=TinyPreset(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, vocab_size=1000)),
        seed=0,
    )
    tokenizer = load_tokenizer(tmp_path)
    prompt = format_concat(task_set.instructions[0], task_set.train[0].input)
    words = re.findall(r"\w+|[^\w\s]", prompt)
    pieces = tokenizer.tokenize(prompt)
    assert len(pieces) == len(words), pieces  # one piece per word, number and punctuation mark
    # a skill prefix is its code, its parameter and the colon (which the corpus's many wordings
    # may leave as two pieces)
    assert tokenizer.tokenize(f"{skill_code(3)} 1 :") in ([skill_code(3), "▁1", "▁:"], [skill_code(3), "▁1", "▁", ":"])
