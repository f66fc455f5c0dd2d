"""Configuration of the adapter generator, and of a tagi checkpoint as stored in `config.json`.

Every default lives here, once. Validation happens in `__post_init__` so that a bad value is
rejected where it is written, not deep inside a forward pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hypernet.errors import UserError
from hypernet.families import ALL_MODULE_NAMES

KNOWN_TARGETS = ALL_MODULE_NAMES
"""Module names LoRA can target in any supported family (hypernet.families); the base decides which apply."""

CHECKPOINT_FORMAT = "tagi-checkpoint"
CHECKPOINT_VERSION = 2
"""2 added the instruction encoder and the generator's attention; a version-1 config reads as the
base encoder and a pooled-only generator (attention_heads 0), which is what it was."""

DEFAULT_MAX_NEW_TOKENS = 64
"""Output length limit in tokens when a caller does not give one (CLI, API, server, evaluation)."""


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of the LoRA adapters the generator emits, and of the generator itself."""

    rank: int = 8
    """LoRA rank r of every generated module."""
    alpha: float = 16.0
    """LoRA alpha; the update is scaled by alpha / rank, as in PEFT."""
    target_modules: tuple[str, ...] = ("q", "v")
    """Module names to adapt in every layer that has them (T5: every attention block, self and
    cross, or feed-forward layer; a decoder: its attention and MLP projections). The base's
    family decides which names exist (hypernet.families)."""
    hidden_dim: int | None = None
    """Width of the generator MLP. None means d_model // 2: a real fraction of the model width,
    unlike the 8-wide bottleneck of the authors' code that confines every A to 8 dimensions."""
    embed_dim: int = 64
    """Width of the learned (layer, module, block) embeddings that tell the MLP what to emit."""
    attention_heads: int = 4
    """Heads of the per-target attention over the instruction's token states (as in HINT): each
    target module's embedding queries the tokens, so the words that tell two tasks apart
    ("smallest" / "largest") reach the adapter even where their mean vectors nearly coincide.
    0: the pooled vector only (the paper's generator; kept for the ablation)."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise UserError(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise UserError(f"alpha must be > 0, got {self.alpha}")
        if not self.target_modules:
            raise UserError("target_modules must name at least one module")
        unknown = sorted(set(self.target_modules) - set(KNOWN_TARGETS))
        if unknown:
            raise UserError(f"unknown target modules {unknown}; choose from {list(KNOWN_TARGETS)}")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise UserError(f"target_modules has duplicates: {list(self.target_modules)}")
        if self.hidden_dim is not None and self.hidden_dim < 1:
            raise UserError(f"hidden_dim must be >= 1, got {self.hidden_dim}")
        if self.embed_dim < 1:
            raise UserError(f"embed_dim must be >= 1, got {self.embed_dim}")
        if self.attention_heads < 0:
            raise UserError(f"attention_heads must be >= 0, got {self.attention_heads}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown generator config keys: {unknown}")
        values = dict(data)
        if "target_modules" in values:
            values["target_modules"] = tuple(values["target_modules"])
        return cls(**values)


ENCODER_KINDS = ("base", "sentence")


@dataclass(frozen=True)
class InstructionEncoderConfig:
    """Which frozen encoder reads instructions (hypernet.encoders): the base's own, or a sentence
    encoder found by `name` and checked against `fingerprint` (never stored in the checkpoint)."""

    kind: str = "base"
    name: str = ""
    """For `sentence`: a packaged encoder's name (hypernet.encoders.PACKAGED_ENCODERS) or a label."""
    fingerprint: str = ""
    """sha256 over the encoder's weight and tokenizer files; loading refuses another encoder."""
    layer: int | None = None
    """For `base` on a decoder-only model: which hidden state the generator reads (0: the token
    embeddings, N: after layer N, negative from the end); None: the last, after the final norm.
    A middle layer of a causal LM often carries more of a text's meaning than its last, which is
    shaped to predict the next token."""

    def __post_init__(self) -> None:
        if self.layer is not None and self.kind != "base":
            raise UserError("instruction encoder layer applies to the base encoder only")
        if self.kind not in ENCODER_KINDS:
            raise UserError(f"instruction encoder kind must be one of {list(ENCODER_KINDS)}, got {self.kind!r}")
        if self.kind == "sentence" and not self.name:
            raise UserError("a sentence instruction encoder needs a name")
        if self.kind == "base" and (self.name or self.fingerprint):
            raise UserError("the base instruction encoder takes no name or fingerprint")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstructionEncoderConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError(f"unknown instruction encoder config keys: {unknown}")
        return cls(**data)


@dataclass(frozen=True)
class CheckpointConfig:
    """What `config.json` of a checkpoint records besides the weights."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    instruction_encoder: InstructionEncoderConfig = field(default_factory=InstructionEncoderConfig)
    base_fingerprint: str = ""
    """sha256 over the base model's weight and tokenizer files; loading refuses a mismatch."""
    input_template: str = "{input}"
    """How an input is written for the adapted model (the instruction is NOT part of it)."""
    instruction_template: str = "{instruction}"
    """How a user's instruction is written for the generator: the form it was trained on
    (checkpoints from `tagi train` use SNI's "Definition: {instruction}")."""
    max_instruction_tokens: int = 512
    max_input_tokens: int = 512
    fusion: bool = True
    """Whether `run` uses instruction fusion unless told otherwise."""

    def __post_init__(self) -> None:
        if "{input}" not in self.input_template:
            raise UserError(f"input_template must contain '{{input}}', got {self.input_template!r}")
        if "{instruction}" not in self.instruction_template:
            raise UserError(f"instruction_template must contain '{{instruction}}', got {self.instruction_template!r}")
        for name in ("max_instruction_tokens", "max_input_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1")

    def format_instruction(self, instruction: str) -> str:
        # replace, not str.format: instructions may contain braces
        return self.instruction_template.replace("{instruction}", instruction)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["generator"]["target_modules"] = list(self.generator.target_modules)
        if self.instruction_encoder.layer is None:
            del data["instruction_encoder"]["layer"]  # checkpoints written before it existed keep their bytes
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointConfig:
        data = dict(data)
        fmt, version = data.pop("format", None), data.pop("version", None)
        if fmt != CHECKPOINT_FORMAT:
            raise UserError(f"not a tagi checkpoint config (format={fmt!r})")
        if version not in (1, CHECKPOINT_VERSION):
            raise UserError(f"unsupported checkpoint version {version!r}; this tagi reads 1 and {CHECKPOINT_VERSION}")
        if version == 1:
            data["generator"] = {"attention_heads": 0, **data.get("generator", {})}
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown checkpoint config keys: {unknown}")
        generator = GeneratorConfig.from_dict(data.pop("generator", {}))
        encoder = InstructionEncoderConfig.from_dict(data.pop("instruction_encoder", {}))
        return cls(generator=generator, instruction_encoder=encoder, **data)
