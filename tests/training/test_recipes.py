"""Recipes: every file in configs/ loads, equals the Python preset it replaced (so the shipped
tiny run is reproducible), and a bad recipe is refused with the file and field named."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path

import pytest
from support import recipe_file

from hypernet.errors import UserError
from training.presets import CONFIGS_DIR, BaseConfig, Preset, from_mapping, get_preset, load_recipe, preset_names
from training.suite import SuiteConfig

ROOT = Path(__file__).resolve().parents[2]
BUILT_IN = ("smoke", "smoke-causal", "sni-smoke", "t5-lm-adapt-base", "t5-xl", "tiny", "tiny-causal")


def test_the_built_in_presets_are_the_files_in_configs():
    assert preset_names() == sorted(BUILT_IN) == sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_recipe_file_is_its_preset(name: str):
    recipe = load_recipe(CONFIGS_DIR / f"{name}.yaml")
    assert recipe == get_preset(name) and recipe.name == name


def test_tiny_is_the_recipe_the_shipped_checkpoint_was_trained_with():
    """The shipped run is reproducible from configs/tiny.yaml: pipeline.json records the recipe it ran.
    Fields added since (the own-base `sni` section, LoopConfig.micro_batch_size, ...) did not exist
    then, so they take their defaults, which keep the run as it was; every recorded value must match."""
    shipped = json.loads((ROOT / "checkpoints" / "tiny" / "pipeline.json").read_text())["preset"]
    recipe = get_preset("tiny")
    assert recipe.suite == SuiteConfig(**shipped["suite"])
    assert from_mapping(Preset, shipped, "") == recipe
    now = json.loads(json.dumps(asdict(recipe)))
    assert _recorded(now, shipped) == shipped


def _recorded(current: dict, shipped: dict) -> dict:
    """`current` cut to the keys `shipped` records (nested)."""
    return {k: _recorded(current[k], v) if isinstance(v, dict) and v else current[k] for k, v in shipped.items()}


def test_the_shipped_recipe_reads_instructions_with_the_packaged_sentence_encoder():
    recipe = get_preset("tiny")
    assert recipe.instruction_encoder == "all-minilm-l6-v2" and recipe.generator.attention_heads > 0
    config = json.loads((ROOT / "checkpoints" / "tiny" / "config.json").read_text())
    assert config["instruction_encoder"]["name"] == recipe.instruction_encoder
    assert config["generator"]["attention_heads"] == recipe.generator.attention_heads


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nbase:\n  loop:\n    stepz: 3\n", "base.loop.stepz: unknown key"),
        ("name: x\nbase:\n  loop:\n    steps: many\n", "base.loop.steps: must be int"),
        ("name: x\nbase:\n  loop:\n    steps: 2.5\n", "base.loop.steps: must be int"),
        ("name: x\ndistill:\n  use_kl: 1\n", "distill.use_kl: must be bool"),
        ("name: x\nteachers:\n  per: everything\n", "teachers.per: must be one of"),
        ("name: x\nsuite:\n  train_instancs: 3\n", "suite.train_instancs: unknown key"),
        ("name: x\ndistill:\n  loop:\n    steps: 0\n", "distill.loop: steps must be >= 1"),
        ("name: x\ndistill:\n  use_ce: false\n  use_kl: false\n  use_ins: false\n", "distill: at least one of use_ce"),
        ("name: x\ngenerator:\n  target_modules: [q, zz]\n", "generator: unknown target modules"),
        ("name: x\nbase:\n  model:\n    d_model: 64.5\n", "base.model.d_model: must be int"),
        ("name: x\ninstruction_template: 'Task:'\n", "instruction_template must contain"),
        ("seed: 1\n", "missing key name"),
        ("- name\n", "must be a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_recipes_are_refused_naming_the_field(tmp_path: Path, text: str, message: str):
    path = recipe_file(tmp_path, text)
    with pytest.raises(UserError, match="recipe.yaml") as info:
        load_recipe(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_recipe_changes_only_what_it_names(tmp_path: Path):
    recipe = load_recipe(recipe_file(tmp_path, "name: mine\ndistill:\n  lambda_kl: 2\n  loop:\n    steps: 7\n"))
    tiny = get_preset("tiny")
    assert recipe.distill.lambda_kl == 2.0 and isinstance(recipe.distill.lambda_kl, float)
    assert recipe.distill.loop.steps == 7 and recipe.distill.loop.batch_size == tiny.distill.loop.batch_size
    # everything it does not name is the dataclass default (the tiny recipe names its own changes)
    assert recipe.base == BaseConfig() and recipe.suite == SuiteConfig()


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UserError, match="smoke"):
        get_preset("huge")


def test_every_recipe_field_belongs_to_a_stage():
    """A field no stage records would let a finished stage be reused after that field changed."""
    import dataclasses

    from training.presets import Preset
    from training.stages import STAGES

    read = {path for stage in STAGES for path in stage.reads}
    for field in dataclasses.fields(Preset):
        if field.name in ("name", "eval_instances", "eval_tasks", "eval_max_new_tokens"):  # a label, the final eval's budget
            continue
        parts = {path for path in read if path == field.name or path.startswith(f"{field.name}.")}
        assert parts, f"no stage reads {field.name}"
        if parts != {field.name}:  # split between stages: every subfield is somebody's
            section = getattr(get_preset("tiny"), field.name)
            assert {f"{field.name}.{f.name}" for f in dataclasses.fields(section)} == parts, field.name


def test_where_and_how_fast_a_loop_runs_is_not_part_of_a_stage_config():
    from training.presets import with_threads
    from training.stages import STAGES, stage_config

    tiny = get_preset("tiny")
    for stage in STAGES:
        assert stage_config(stage, with_threads(tiny, 1)) == stage_config(stage, tiny)
    assert stage_config(STAGES[0], tiny) != stage_config(STAGES[0], dataclasses.replace(tiny, seed=1))
