"""What `tagi serve` can be told, validated, without importing the server (the CLI's --help
reads the defaults here, and the server's processes get these values)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hypernet.errors import UserError

API_KEY_ENV = "LIT_SERVER_API_KEY"
"""LitServe's variable: set, every endpoint but /health needs the key."""
DEFAULT_STATE_DIR = Path.home() / ".cache" / "tagi" / "serve"
EngineName = Literal["mixed", "peft-swap"]
"""mixed: serving.service.MixedBatchEngine; peft-swap: serving.baseline.SwapPerRequestEngine."""
INTERRUPT_GRACE_S = 5.0
"""How long Ctrl+C lets in-flight requests finish (SIGTERM waits drain_seconds): longer feels hung."""
HOSTS = ("127.0.0.1", "0.0.0.0", "::")
"""The interfaces LitServe can bind."""


@dataclass(frozen=True)
class ServerSettings:
    """Every setting of `tagi serve`, and the one place their defaults live (the CLI reads them here)."""

    checkpoint: Path
    state_dir: Path = DEFAULT_STATE_DIR
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_batch_size: int = 8
    batch_timeout: float = 0.01
    adapter_cache_mb: float = 256.0
    max_adapters: int = 10_000
    """Registry rows kept; the least recently used beyond it are forgotten (404 until posted again)."""
    engine: EngineName = "mixed"
    torch_threads: int | None = None
    """None: the cores left after one for the HTTP side, shared by the workers (at least 1)."""
    timeout: float = 60.0
    """Seconds a request may wait for its answer (queue and inference) before it is answered 504."""
    drain_seconds: float = 30.0
    """On SIGTERM, how long in-flight requests may take to finish before the server exits anyway."""
    header_timeout: float = 10.0
    """Seconds a connection has to send a request's headers (serving.slowclients); then it is closed."""
    body_timeout: float = 30.0
    """Seconds a request's whole body may take to arrive after its headers; then 408 and closed."""
    keep_alive_timeout: float = 5.0
    """Seconds an idle kept-alive connection stays open between requests (uvicorn's timeout_keep_alive)."""
    api_key: str | None = None

    def __post_init__(self) -> None:
        checks = {
            "workers": self.workers >= 1,
            "max_batch_size": self.max_batch_size >= 1,
            "timeout": self.timeout > 0,  # before batch_timeout, which must be below it: the error names the cause
            "batch_timeout": 0 <= self.batch_timeout < self.timeout,
            "drain_seconds": self.drain_seconds >= 0,
            "adapter_cache_mb": self.adapter_cache_mb >= 0,
            "max_adapters": self.max_adapters >= 1,
            "header_timeout": self.header_timeout > 0,
            "body_timeout": self.body_timeout > 0,
            "keep_alive_timeout": self.keep_alive_timeout > 0,
            "port": 1024 <= self.port <= 65535,
            "torch_threads": self.torch_threads is None or self.torch_threads >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise UserError(f"invalid {name.replace('_', '-')}: {getattr(self, name)!r}")
        if self.host not in HOSTS:
            raise UserError(f"host must be one of {', '.join(HOSTS)} (LitServe's choices), got {self.host!r}")

    def threads_per_worker(self) -> int:
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, ((os.cpu_count() or 1) - 1) // self.workers)
