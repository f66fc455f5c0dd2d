"""Checkpoint files without torch: names, reading config.json, fingerprints, atomic writes.

Kept free of torch so that processes that only route requests (the server's HTTP front) can
read a checkpoint's config and fingerprint without importing it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypernet.config import CheckpointConfig

CONFIG_FILE = "config.json"
GENERATOR_FILE = "generator.safetensors"
BASE_DIR = "base"
SPIECE = "spiece.model"
# Files that define the base model's behaviour; their bytes make its fingerprint.
_FINGERPRINTED = ("*.safetensors", SPIECE, "tokenizer.json")


class CheckpointError(ValueError):
    """A checkpoint or export directory is missing, malformed, or does not match."""


@contextmanager
def atomic_directory(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to `target`; on success it replaces `target` by rename."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write: temp file in the same directory, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def base_fingerprint(base_dir: Path) -> str:
    digest = hashlib.sha256()
    files = sorted({p for pattern in _FINGERPRINTED for p in Path(base_dir).glob(pattern)})
    if not files:
        raise CheckpointError(f"{base_dir} holds no safetensors weights")
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def checkpoint_fingerprint(checkpoint_dir: Path) -> str:
    """Base fingerprint + generator bytes + config: what an adapter id is a hash of."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, GENERATOR_FILE):
        digest.update((Path(checkpoint_dir) / name).read_bytes())
    return digest.hexdigest()


def read_checkpoint_config(path: Path) -> CheckpointConfig:
    """Check the layout of a checkpoint directory and parse its config.json."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    for name in (CONFIG_FILE, GENERATOR_FILE, BASE_DIR):
        if not (path / name).exists():
            raise CheckpointError(f"{path} is not a tagi checkpoint: {name} is missing")
    try:
        return CheckpointConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path / CONFIG_FILE} is invalid: {err}") from err
