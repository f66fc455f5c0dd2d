"""PEFT archives of adapters, built per request and never stored.

The archive holds one directory named after the adapter id with the files of
`hypernet.io.export_peft` (adapter_config.json, adapter_model.safetensors, tagi.json), so
`tar xzf` then `PeftModel.from_pretrained(base, "<adapter_id>")` loads it.

Why built per request rather than kept in an on-disk cache: an archive is a pure function of
the adapter, which a worker holds in its LRU cache or regenerates in one generator pass, and
building it takes milliseconds next to that; a stored copy would be a second cache to bound,
evict and keep consistent with DELETE across processes, for a download that is rare next to
inference. So the server's disk use does not grow with downloads at all, and a download is as
correct under a concurrent DELETE as any request: the worker checks the registry, then the
bytes it built are the answer. The archive is built in memory (an adapter is a few MB at most)
and is byte-for-byte reproducible (fixed tar metadata, no gzip timestamp), so downloading the
same adapter twice gives the same file, whichever worker built it.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hypernet.model import Adapter


def build_archive(adapter: Adapter) -> bytes:
    """The .tar.gz of the adapter's PEFT directory."""
    # Imported here: this module is also used by the HTTP processes, which never load torch.
    from hypernet.files import BASE_DIR
    from hypernet.io import export_peft

    with tempfile.TemporaryDirectory(prefix="tagi-export-") as tmp:
        export_dir = Path(tmp) / adapter.adapter_id
        # The base by its directory name inside a checkpoint, never this server's path.
        export_peft(adapter, export_dir, base_name=BASE_DIR)
        tar_bytes = io.BytesIO()
        with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_entry(adapter.adapter_id, tarfile.DIRTYPE, 0o755))
            for path in sorted(export_dir.iterdir()):
                data = path.read_bytes()
                info = _entry(f"{adapter.adapter_id}/{path.name}", tarfile.REGTYPE, 0o644)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return gzip.compress(tar_bytes.getvalue(), mtime=0)


def _entry(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    """Fixed owner, mode and time: the archive depends on the adapter only."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    return info
