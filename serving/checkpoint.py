"""What the server's main and HTTP processes need to know about a checkpoint, without torch.

Only inference workers load the model. The main process forks LitServe's HTTP servers and
should neither pay the ~3.5 s torch/transformers import nor hand a torch runtime to forked
children; it needs the config (limits, /info) and the fingerprint (registry keys). The
fingerprint mirrors `hypernet.io.checkpoint_fingerprint`; a test keeps the two equal.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from hypernet.config import CheckpointConfig

# Names as in hypernet.io (importing it would import torch).
_CONFIG_FILE = "config.json"
_GENERATOR_FILE = "generator.safetensors"
_BASE_DIR = "base"


class CheckpointInvalid(ValueError):
    """The checkpoint directory cannot be served; the message says why, in one line."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    config: CheckpointConfig
    fingerprint: str

    def describe(self) -> dict:
        """The checkpoint part of /info."""
        generator = self.config.generator
        return {
            "checkpoint": str(self.path),
            "fingerprint": self.fingerprint,
            "rank": generator.rank,
            "alpha": generator.alpha,
            "target_modules": list(generator.target_modules),
            "max_instruction_tokens": self.config.max_instruction_tokens,
            "max_input_tokens": self.config.max_input_tokens,
            "fusion_default": self.config.fusion,
            "input_template": self.config.input_template,
        }


def read_checkpoint(path: Path) -> CheckpointInfo:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointInvalid(f"checkpoint directory {path} does not exist")
    for name in (_CONFIG_FILE, _GENERATOR_FILE, _BASE_DIR):
        if not (path / name).exists():
            raise CheckpointInvalid(f"{path} is not a tagi checkpoint: {name} is missing")
    try:
        config = CheckpointConfig.from_dict(json.loads((path / _CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise CheckpointInvalid(f"{path / _CONFIG_FILE} is invalid: {err}") from err
    digest = hashlib.sha256()
    for name in (_CONFIG_FILE, _GENERATOR_FILE):
        digest.update((path / name).read_bytes())
    return CheckpointInfo(path.resolve(), config, digest.hexdigest())
