"""What the server's main and HTTP processes need to know about a checkpoint, without torch.

Only inference workers load the model. The main process forks LitServe's HTTP servers and
should neither pay the ~3.5 s torch/transformers import nor hand a torch runtime to forked
children; it needs the config (limits, /info) and the fingerprint (registry keys), both read by
`hypernet.files`, and the base's family (/info), read by `hypernet.families` from config.json;
neither imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hypernet.config import CheckpointConfig
from hypernet.families import Family, read_family
from hypernet.files import BASE_DIR, checkpoint_fingerprint, read_checkpoint_config


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    config: CheckpointConfig
    fingerprint: str
    family: Family

    def describe(self) -> dict:
        """The checkpoint part of /info: named, never located (no server paths leave the server)."""
        generator = self.config.generator
        return {
            "checkpoint": self.path.name,
            "fingerprint": self.fingerprint,
            # Which runtimes load the PEFT archives: a decoder-only base's load in vLLM, SGLang and LoRAX too.
            "base_family": self.family.name,
            "base_kind": self.family.kind,
            "rank": generator.rank,
            "alpha": generator.alpha,
            "target_modules": list(generator.target_modules),
            "max_instruction_tokens": self.config.max_instruction_tokens,
            "max_input_tokens": self.config.max_input_tokens,
            "fusion_default": self.config.fusion,
            "input_template": self.config.input_template,
        }


def read_checkpoint(path: Path) -> CheckpointInfo:
    """Raises hypernet.errors.UserError (one line) for anything that is not a checkpoint, or one
    whose base is of no supported family."""
    config = read_checkpoint_config(path)
    family = read_family(Path(path) / BASE_DIR, "checkpoint base")
    return CheckpointInfo(Path(path).resolve(), config, checkpoint_fingerprint(Path(path)), family)
