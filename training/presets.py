"""Pipeline presets: the sizes and budgets of every stage, in one place.

`tiny` is the shipped recipe (the 90-minute CPU budget); `smoke` runs every stage in about a
minute on a micro model and exists for tests and CI. A preset is plain dataclasses, so
`tagi train` can print it and every stage can record it next to its outputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from training.curriculum import CurriculumConfig
from training.loop import LoopConfig


@dataclass(frozen=True)
class SuiteSize:
    """Arguments of training.synthetic.SuiteConfig (kept separate so presets stay data)."""

    values: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BaseConfig:
    """Stage 0: from-scratch tokenizer + T5, span corruption + instruction-free skills."""

    # d192, 3+3 layers: 3.3M parameters (13 MB in float32). The d256 4+4 base of hypernet.tiny
    # is 30 MB by itself, over the 30 MB budget of the shipped directory before any teacher.
    d_model: int = 192
    d_ff: int = 768
    num_layers: int = 3
    num_heads: int = 6
    vocab_size: int = 1000
    """An upper bound: SentencePiece keeps what the small corpus supports (~740 pieces)."""
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
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(
        steps=6000, batch_size=64, lr=1e-2, optimizer="adafactor", weight_decay=0.0, warmup_steps=150, eval_every=1000))


@dataclass(frozen=True)
class TeacherConfig:
    """Stage 1: instance teachers (PEFT LoRA per task or category) and the meta-trained teacher."""

    per: Literal["task", "function", "category"] = "function"
    """One teacher per task, per function (tasks equal up to wording), or per category. Per
    category would mix e.g. first_k with k = 1, 2, 3 in one adapter that cannot know k."""
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ("q", "v")
    teacher_loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=80, batch_size=32, lr=3e-3, warmup_steps=8, checkpoint_every=1000, log_every=10))
    meta_loop: LoopConfig = field(default_factory=lambda: LoopConfig(
        steps=2000, batch_size=64, lr=1e-3, optimizer="adafactor", weight_decay=0.0, warmup_steps=100, eval_every=500))
    max_input_tokens: int = 128
    max_output_tokens: int = 32
    eval_instances: int = 300
    """Held-back instances scored at each evaluation of the meta teacher (per-primitive EM)."""


@dataclass(frozen=True)
class HypernetPretrainConfig:
    """Stage 2: a -> generator, b -> input, c -> target, cross-entropy."""

    segment_tokens: int = 12
    """Tokens per segment (a, b, c each)."""
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=300, batch_size=32, lr=1e-3, warmup_steps=30))


@dataclass(frozen=True)
class DistillConfig:
    """Stage 3: L_ce + lambda1 * L_kl + lambda2 * L_ins."""

    use_ce: bool = True
    use_kl: bool = True
    use_ins: bool = True
    lambda_kl: float = 1.0
    lambda_ins: float = 0.5
    temperature: float = 2.0
    no_fusion_prob: float = 0.3
    """Share of batches trained without fusion, so the adapter alone (a PEFT export) works too."""
    max_input_tokens: int = 64
    max_output_tokens: int = 32
    eval_instances: int = 200
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    """uniform (every training instance, epoch by epoch) or tapir (training.curriculum)."""
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=2500, batch_size=32, lr=1e-3, warmup_steps=100, eval_every=500))


@dataclass(frozen=True)
class Preset:
    name: str
    suite: dict[str, int]
    seed: int = 0
    held_back: int = 10
    """Instances per training task that no stage trains on."""
    generator_rank: int = 8
    generator_alpha: float = 16.0
    target_modules: tuple[str, ...] = ("q", "v")
    base: BaseConfig = field(default_factory=BaseConfig)
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    hypernet_pretrain: HypernetPretrainConfig = field(default_factory=HypernetPretrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval_instances: int = 20
    """Instances per task scored by the final `tagi eval` of each task set."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _smoke_loop(steps: int, batch: int = 8, **kw: Any) -> LoopConfig:
    return LoopConfig(steps=steps, batch_size=batch, lr=3e-3, warmup_steps=2, checkpoint_every=max(1, steps // 2), log_every=2, **kw)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(name="tiny", suite={"train_instances": 300}),
    "smoke": Preset(
        name="smoke",
        suite={"train_instances": 24, "test_instances": 6, "train_compositions": 4, "unseen_compositions": 2,
               "paraphrases_per_function": 1, "values_per_primitive": 1, "unseen_values_per_primitive": 1},
        held_back=4,
        base=BaseConfig(d_model=64, d_ff=128, num_layers=2, num_heads=4, vocab_size=600, loop=_smoke_loop(8)),
        teachers=TeacherConfig(per="category", teacher_loop=_smoke_loop(2, threads=0), meta_loop=_smoke_loop(6, eval_every=3), eval_instances=16),
        hypernet_pretrain=HypernetPretrainConfig(segment_tokens=6, loop=_smoke_loop(4)),
        distill=DistillConfig(loop=_smoke_loop(6, eval_every=3), eval_instances=16),
        eval_instances=3,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


def with_steps(loop: LoopConfig, steps: int | None = None, seed: int | None = None, device: str | None = None) -> LoopConfig:
    """A loop config with command-line overrides applied."""
    changes: dict[str, Any] = {}
    if steps is not None:
        changes["steps"] = steps
        changes["warmup_steps"] = min(loop.warmup_steps, max(1, steps // 10))
    if seed is not None:
        changes["seed"] = seed
    if device is not None:
        changes["device"] = device
    return replace(loop, **changes)


def with_threads(preset: Preset, threads: int) -> Preset:
    """The preset with every stage's loop on `threads` CPU threads."""
    def loop(section: Any, name: str = "loop") -> Any:
        return replace(section, **{name: replace(getattr(section, name), threads=threads)})

    teachers = loop(loop(preset.teachers, "teacher_loop"), "meta_loop")
    return replace(preset, base=loop(preset.base), teachers=teachers, hypernet_pretrain=loop(preset.hypernet_pretrain),
                   distill=loop(preset.distill))
