"""Files without torch: checkpoint names, reading config.json, fingerprints, atomic writes.

Kept free of torch so that processes that only route requests (the server's HTTP front) can
read a checkpoint's config and fingerprint without importing it. The atomic-write helpers here
are the only ones in the project: every file tagi writes goes through them, so a crash leaves
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hypernet.config import CheckpointConfig
from hypernet.errors import CheckpointError

CONFIG_FILE = "config.json"
GENERATOR_FILE = "generator.safetensors"
BASE_DIR = "base"
SPIECE = "spiece.model"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny"
"""The shipped trained checkpoint: what `hypernet.load()` and every command use by default."""
# Files that define the base model's behaviour; their bytes make its fingerprint.
_FINGERPRINTED = ("*.safetensors", SPIECE, "tokenizer.json")


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


def directory_once(target: Path, fill: Callable[[Path], None]) -> Path:
    """`target`, filled by `fill(tmp)` in a temporary sibling and renamed into place unless it is
    already there. Concurrent callers (several server workers unpacking one cache entry) never
    see a half-written directory and never replace one another's: the first rename wins, a later
    one finds the name taken (renaming onto a non-empty directory fails) and drops its copy."""
    target = Path(target)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        os.rename(tmp, target)
    except OSError:
        if not target.exists():
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a unique temporary file in the same directory, flush it to disk, then rename.

    The temporary name is unique (mkstemp), so two processes writing the same file never
    share a temporary; the last rename wins and readers always see a whole file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would have
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: dict | list, compact: bool = False) -> None:
    """Atomic JSON write with sorted keys: indented, so files diff well, or `compact` (no
    whitespace) for large reports that count against a shipped checkpoint's size budget
    (eval.json: 40% smaller)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":")) if compact else json.dumps(data, indent=2, sort_keys=True)
    atomic_write_text(path, text + "\n")


def directory_bytes(path: Path) -> int:
    """Bytes of every file below `path` (what a checkpoint or an export costs on disk)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


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
