"""PEFT archives of adapters: `<state-dir>/exports/<adapter_id>.tar.gz`.

The archive holds one directory named after the adapter id with the files of
`hypernet.io.export_peft` (adapter_config.json, adapter_model.safetensors, tagi.json), so
`tar xzf` then `PeftModel.from_pretrained(base, "<adapter_id>")` loads it. An id is a
content hash, so a written archive stays valid and later downloads are served from disk
without a worker. The archive is built in memory (an adapter is a few MB at most) and written
atomically: a reader never sees half an archive.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hypernet.files import atomic_write_bytes

if TYPE_CHECKING:
    from hypernet.model import Adapter

EXPORTS_DIR = "exports"


def archive_path(state_dir: Path, adapter_id: str) -> Path:
    return Path(state_dir) / EXPORTS_DIR / f"{adapter_id}.tar.gz"


def write_archive(adapter: Adapter, state_dir: Path) -> Path:
    # Imported here: this module is also used by the HTTP processes, which never load torch.
    from hypernet.io import export_peft

    target = archive_path(state_dir, adapter.adapter_id)
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="tagi-export-") as tmp:
        export_dir = Path(tmp) / adapter.adapter_id
        export_peft(adapter, export_dir)
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(export_dir, arcname=adapter.adapter_id)
    atomic_write_bytes(target, buffer.getvalue())
    return target
