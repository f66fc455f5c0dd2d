"""Recipes: the sizes and budgets of every stage, as validated dataclasses read from YAML.

A recipe file (`configs/<name>.yaml`, or any file given to `tagi train --recipe`) holds only
what it changes: every value it does not name is the default of its dataclass below, so each
default lives in one place. The built-in presets ARE such files: `--preset tiny` reads
`configs/tiny.yaml` (the shipped recipe, the 90-minute CPU budget), `--preset smoke` reads
`configs/smoke.yaml` (every stage in about a minute on a micro model, for tests and CI). A recipe
with an `sni` section (configs/sni-smoke.yaml, t5-lm-adapt-base.yaml, t5-xl.yaml) trains a given
base on Super-Natural Instructions instead (`tagi train --base DIR --sni DIR`).

Loading works like nanoGPT's configurator without its `exec`: an unknown key or a value of
the wrong type is refused with the dotted name of the field, and each dataclass's
`__post_init__` rejects bad values. Sizes that belong to another package are referenced, not
copied: the generator is a `hypernet.config.GeneratorConfig`, the stage-0 model a
`hypernet.tiny.TinyPreset`, the synthetic suite a `training.suite.SuiteConfig`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from hypernet.config import DEFAULT_MAX_NEW_TOKENS, GeneratorConfig
from hypernet.errors import UserError
from hypernet.tiny import TinyPreset
from hypernet.tiny_causal import CAUSAL_FAMILIES, CAUSAL_PRESETS, CausalPreset
from training.citing import CitingConfig
from training.curriculum import CurriculumConfig
from training.data import TK_TEST_INSTANCES, PromptFormat
from training.loop import LoopConfig
from training.suite import SuiteConfig

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
"""The built-in recipes, one YAML file per preset name."""


def _positive(owner: object, *names: str) -> None:
    for name in names:
        if getattr(owner, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(owner, name)}")


def _share(owner: object, *names: str) -> None:
    for name in names:
        if not 0 <= getattr(owner, name) <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(owner, name)}")


@dataclass(frozen=True)
class BaseConfig:
    """Stage 0: from-scratch tokenizer + base, span corruption (a causal base: continuation) +
    instruction-free skills."""

    family: str = "t5"
    """t5 (`model` below), or a decoder-only family of hypernet.tiny_causal (llama, mistral, qwen2,
    qwen3, gpt2; `causal_model`), pretrained by next-token prediction on the same texts: the
    continuation of a cut text instead of span corruption, and the skills as prompt -> answer."""
    causal_model: CausalPreset = field(default_factory=lambda: CAUSAL_PRESETS["tiny"])
    """Sizes of a causal base (family other than t5): hypernet.tiny_causal's `tiny` by default."""
    model: TinyPreset = field(
        default_factory=lambda: TinyPreset(d_model=192, d_ff=768, num_layers=3, num_heads=6, d_kv=32, vocab_size=1000)
    )
    """Sizes of the T5. d192, 3+3 layers: 3.3M parameters (13 MB in float32); hypernet.tiny's own
    d256 4+4 default is 30 MB by itself, over the 30 MB budget of the shipped directory.
    vocab_size is an upper bound: SentencePiece keeps what the small corpus supports (~740)."""
    span_fraction: float = 0.1
    """Share of examples that are span corruption; the rest are instruction-free skills."""
    skills: Literal["world", "unconditioned", "none"] = "world"
    """world: fresh list-world examples of the training functions, named by opaque primitive
    symbols (training.base_pretrain.WorldSkills); needs synthetic training tasks.
    unconditioned: the training pairs with no instruction and no symbol (a mixture only)."""
    unconditioned_share: float = 0.1
    """With skills=world: share of skill examples shown without their symbols."""
    noise_density: float = 0.15
    mean_span: float = 3.0
    max_input_tokens: int = 96
    max_output_tokens: int = 48
    eval_instances: int = 300
    """Held-back instances scored (with their symbols) at each evaluation, when skills=world."""
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(
            steps=6000, batch_size=64, lr=1e-2, optimizer="adafactor", weight_decay=0.0, warmup_steps=150, eval_every=1000
        )
    )

    def __post_init__(self) -> None:
        if self.family != "t5" and self.family not in CAUSAL_FAMILIES:
            raise ValueError(f"family must be t5 or one of {', '.join(CAUSAL_FAMILIES)}, got {self.family!r}")
        if self.skills not in ("world", "unconditioned", "none"):
            raise ValueError(f"skills must be world, unconditioned or none, got {self.skills!r}")
        _share(self, "span_fraction", "unconditioned_share")
        if not 0 < self.noise_density < 1:
            raise ValueError(f"noise_density must be in (0, 1), got {self.noise_density}")
        if self.mean_span < 1:
            raise ValueError(f"mean_span must be >= 1, got {self.mean_span}")
        _positive(self, "max_input_tokens", "max_output_tokens", "eval_instances")


@dataclass(frozen=True)
class TeacherConfig:
    """Stage 1: instance teachers (PEFT LoRA per task or function) and the meta-trained teacher."""

    per: Literal["task", "function", "category"] = "function"
    """One teacher per task, per function (tasks equal up to wording), or per category. Per
    category would mix e.g. first_k with k = 1, 2, 3 in one adapter that cannot know k."""
    rank: int = 8
    """LoRA r of the teachers (their own, not the generator's: L_ins compares in delta-W space)."""
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ("q", "v")
    teacher_loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(steps=80, batch_size=32, lr=3e-3, warmup_steps=8, checkpoint_every=1000, log_every=10)
    )
    meta_loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(
            steps=2000, batch_size=64, lr=1e-3, optimizer="adafactor", weight_decay=0.0, warmup_steps=100, eval_every=500
        )
    )
    max_input_tokens: int = 128
    max_output_tokens: int = 32
    eval_instances: int = 300
    """Held-back instances scored at each evaluation of the meta teacher (per-primitive EM)."""

    def __post_init__(self) -> None:
        if self.per not in ("task", "function", "category"):
            raise ValueError(f"per must be task, function or category, got {self.per!r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        _positive(self, "rank", "max_input_tokens", "max_output_tokens", "eval_instances")
        # The same checks as the generator's targets: the teachers adapt the same modules.
        GeneratorConfig(rank=self.rank, alpha=self.alpha, target_modules=self.target_modules)


@dataclass(frozen=True)
class HypernetPretrainConfig:
    """Stage 2: a -> generator, b -> input, c -> target, cross-entropy."""

    segment_tokens: int = 12
    """Tokens per segment (a, b, c each)."""
    corpus: str | None = None
    """A text file to pretrain on (`tagi train --corpus`): plain text, one document per line, or
    JSONL with a "text" field per line (*.jsonl, *.json); the paper used C4. None: the training
    tasks' own instructions and instances."""
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=300, batch_size=32, lr=1e-3, warmup_steps=30))

    def __post_init__(self) -> None:
        _positive(self, "segment_tokens")


@dataclass(frozen=True)
class DistillConfig:
    """Stage 3: L_ce + lambda1 * L_kl + lambda2 * L_ins."""

    use_ce: bool = True
    use_kl: bool = True
    use_ins: bool = True
    lambda_kl: float = 1.0
    lambda_ins: float | Literal["sigmoid"] = 0.5
    """A fixed weight, or "sigmoid": the paper's lambda2 = sigmoid(L_ins), a weight that follows the
    loss (in [0.5, 1) as L_ins >= 0) and is not itself differentiated (training.distill)."""
    temperature: float = 2.0
    no_fusion_prob: float = 0.3
    """Share of batches trained without fusion, so the adapter alone (a PEFT export) works too."""
    max_input_tokens: int = 64
    max_output_tokens: int = 32
    eval_instances: int = 200
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    """uniform (every training instance, epoch by epoch), tapir (training.curriculum), citing or
    tapir+citing (revision rounds, training.citing)."""
    citing: CitingConfig | None = None
    """The revision rounds' knobs and whether the generator reads each category's rubric (any kind);
    None: CitingConfig's defaults (None keeps the records of stages trained before it existed valid)."""
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(steps=2500, batch_size=32, lr=1e-3, warmup_steps=100, eval_every=500)
    )

    def __post_init__(self) -> None:
        if not (self.use_ce or self.use_kl or self.use_ins):
            raise ValueError("at least one of use_ce, use_kl, use_ins must be true")
        if self.lambda_kl < 0:
            raise ValueError(f"lambda_kl must be >= 0, got {self.lambda_kl}")
        if isinstance(self.lambda_ins, str) and self.lambda_ins != "sigmoid":
            raise ValueError(f"lambda_ins must be a number >= 0 or 'sigmoid', got {self.lambda_ins!r}")
        if not isinstance(self.lambda_ins, str) and self.lambda_ins < 0:
            raise ValueError(f"lambda_ins must be >= 0, got {self.lambda_ins}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        _share(self, "no_fusion_prob")
        _positive(self, "max_input_tokens", "max_output_tokens", "eval_instances")


@dataclass(frozen=True)
class SniConfig:
    """Training data of a real base: one split of Super-Natural Instructions (training.sni).

    Stages 1-3 train on the split's training tasks (ROOT/splits/<split>/train_tasks.txt, minus
    excluded_tasks.txt), each capped as Tk-Instruct does and with the recipe's `held_back`
    instances set apart; the final evaluation scores the split's test tasks."""

    split: str = "default"
    """ROOT/splits/<split>/: `default` is the official split (756 training, 119 test tasks)."""
    prompt_format: PromptFormat = "def+2pos"
    """What the generator and the meta teacher read: the definition (`def`), or the definition and
    two positive examples (`def+2pos`, the paper's main setting)."""
    max_instances_per_task: int = TK_TEST_INSTANCES
    """Tk-Instruct's cap: the first N instances of each training task (file order)."""
    test_instances: int = TK_TEST_INSTANCES
    """The first N instances of each test task scored by the final evaluation (Tk-Instruct's 100)."""

    def __post_init__(self) -> None:
        if not self.split.strip() or "/" in self.split or self.split.startswith("."):
            raise ValueError(f"split must be a directory name under splits/, got {self.split!r}")
        _positive(self, "max_instances_per_task", "test_instances")


@dataclass(frozen=True)
class Preset:
    """A whole recipe: data, seed, the checkpoint's generator and template, every stage."""

    name: str
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    """The synthetic list world the stages train on (`tagi data synth`)."""
    seed: int = 0
    held_back: int = 10
    """Instances per training task that no stage trains on."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    instruction_template: str = "Definition: {instruction}"
    """The trained checkpoint's instruction_template: stages feed the generator SNI "def"
    prompts, so a user's bare instruction is given the same form."""
    instruction_encoder: str = "all-minilm-l6-v2"
    """What reads instructions (hypernet.encoders): "base" (the base's own encoder, the paper's
    choice) or a sentence encoder's name. The default, all-MiniLM-L6-v2, brings English that a
    from-scratch tiny base cannot learn from list-world text; it ships with tagi's dependencies."""
    base: BaseConfig = field(default_factory=BaseConfig)
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    hypernet_pretrain: HypernetPretrainConfig = field(default_factory=HypernetPretrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval_instances: int = 20
    """Instances per task scored by the final `tagi eval` of each task set."""
    eval_tasks: int | None = None
    """At most this many tasks of each task set scored by the final `tagi eval` (spread over the set);
    None: all of them. The smoke recipes keep CI's end-to-end runs short with it."""
    eval_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    """Tokens generated per answer by the final `tagi eval` of the synthetic sets."""
    sni: SniConfig | None = None
    """Train a local base on Super-Natural Instructions (`tagi train --base DIR --sni DIR`; stage 0
    is skipped). None: the synthetic list world on stage 0's from-scratch base."""

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("name must not be empty")
        if self.seed < 0 or self.held_back < 0:
            raise ValueError(f"seed and held_back must be >= 0, got {self.seed}, {self.held_back}")
        if "{instruction}" not in self.instruction_template:
            raise ValueError(f"instruction_template must contain '{{instruction}}', got {self.instruction_template!r}")
        _positive(self, "eval_instances", "eval_max_new_tokens")
        if self.eval_tasks is not None and self.eval_tasks < 1:
            raise ValueError(f"eval_tasks must be >= 1, got {self.eval_tasks}")

    @property
    def prompt_format(self) -> PromptFormat:
        """How the stages show a task's instruction: the SNI section's format, else `def` (a
        synthetic task's wordings are definitions; it has no examples worth showing)."""
        return self.sni.prompt_format if self.sni is not None else "def"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- YAML -> dataclasses ------------------------------------------------------------------------


def _convert(kind: Any, value: Any, where: str, default: Any) -> Any:
    """`value` (from YAML) as an instance of the annotated type `kind`; refuses anything else."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        return from_mapping(kind, value, where, None if default is dataclasses.MISSING else default)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        for arm in arms:
            try:
                return _convert(arm, value, where, default if len(arms) == 1 else None)
            except UserError:
                if len(arms) == 1:
                    raise
        raise UserError(f"{where}: must be {' or '.join(_kind_name(a) for a in arms)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise UserError(f"{where}: must be a list, got {value!r}")
        return tuple(_convert(args[0], item, f"{where}[{i}]", None) for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: must be a mapping, got {value!r}")
        return {_convert(args[0], k, where, None): _convert(args[1], v, f"{where}.{k}", None) for k, v in value.items()}
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (bool, int, float, str) and type(value) is kind:
        return value
    raise UserError(f"{where}: must be {getattr(kind, '__name__', kind)}, got {value!r}")


def _kind_name(kind: Any) -> str:
    if typing.get_origin(kind) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(kind))
    return getattr(kind, "__name__", str(kind))


def _field_default(f: dataclasses.Field) -> Any:
    """A field's default value (nested sections merge onto it), or MISSING."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def from_mapping(cls: type, data: Any, where: str, default: Any = None) -> Any:
    """An instance of dataclass `cls` from a YAML mapping: named fields replace those of
    `default` (or of the class defaults); unknown keys and wrong types are refused."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: must be a mapping of {cls.__name__} fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise UserError(f"{name}: unknown key (known: {', '.join(fields)})")
        values[key] = _convert(
            hints[key], value, name, getattr(default, key) if default is not None else _field_default(fields[key])
        )
    if default is None:
        missing = [n for n, f in fields.items() if n not in values and _field_default(f) is dataclasses.MISSING]
        if missing:
            raise UserError(f"{where or cls.__name__}: missing key {', '.join(missing)}")
    try:
        return replace(default, **values) if default is not None else cls(**values)
    except (TypeError, ValueError) as error:
        raise UserError(f"{where or cls.__name__}: {error}") from None


def load_recipe(path: str | Path) -> Preset:
    """Read a recipe file; every problem is a one-line UserError naming the file and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise UserError(f"cannot read recipe {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path} is not valid YAML{where}: {getattr(error, 'problem', None) or error}") from None
    try:
        return from_mapping(Preset, data if data is not None else {}, "")
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def get_preset(name: str) -> Preset:
    """The built-in recipe `configs/<name>.yaml`."""
    if name not in preset_names():
        raise UserError(f"unknown preset {name!r}; choose from {preset_names()} or pass --recipe FILE")
    return load_recipe(CONFIGS_DIR / f"{name}.yaml")


# ---- command-line overrides ---------------------------------------------------------------------


def with_steps(loop: LoopConfig, steps: int) -> LoopConfig:
    """A loop shortened (or lengthened) to `steps`, its warmup kept to at most a tenth of it; the loop
    itself at its own length (so that a run at the recipe's budget is the recipe's run)."""
    if steps == loop.steps:
        return loop
    return replace(loop, steps=steps, warmup_steps=min(loop.warmup_steps, max(1, steps // 10)))


def replace_path(recipe: Preset, path: str, value: Any) -> Preset:
    """`recipe` with the field at dotted `path` (e.g. "teachers.meta_loop") set to `value`."""
    head, _, rest = path.partition(".")
    if not rest:
        return replace(recipe, **{head: value})
    return replace(recipe, **{head: replace_path(getattr(recipe, head), rest, value)})


def get_path(recipe: Any, path: str) -> Any:
    for part in path.split("."):
        recipe = getattr(recipe, part)
    return recipe


LOOPS = ("base.loop", "teachers.teacher_loop", "teachers.meta_loop", "hypernet_pretrain.loop", "distill.loop")


def with_threads(recipe: Preset, threads: int) -> Preset:
    """The recipe with every stage's loop on `threads` CPU threads."""
    for path in LOOPS:
        recipe = replace_path(recipe, path, replace(get_path(recipe, path), threads=threads))
    return recipe
