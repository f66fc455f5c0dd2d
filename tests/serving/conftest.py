"""Real `tagi serve` processes on loopback for the serving tests.

Each server runs in its own process session (serving.launch.LocalServer), so teardown
signals and reaps the whole group and checks that nothing is left. Servers are
module-scoped: starting one costs several seconds.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from serving.launch import LocalServer


class TestServer(LocalServer):
    __test__ = False  # not a test class, whatever its name

    def client(self) -> httpx2.Client:
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        return httpx2.Client(base_url=self.url, timeout=60.0, headers=headers)


def start_server(tmp: Path, checkpoint: Path, *args: str, env: dict[str, str] | None = None,
                 state_dir: Path | None = None) -> TestServer:
    return TestServer(checkpoint, state_dir or tmp / "state", tmp / f"server-{time.monotonic_ns()}.log", *args, env=env)


@pytest.fixture(scope="session")
def serve_checkpoint(checkpoint_dir: Path) -> Path:
    """The micro checkpoint of tests/conftest.py: non-zero adapters on q k v o wi wo,
    128 instruction tokens, 64 input tokens."""
    return checkpoint_dir


@pytest.fixture(scope="session")
def server_factory():
    """`start_server(tmp, checkpoint, *args, env=..., state_dir=...)`, for tests that manage
    a server's life themselves."""
    return start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serve_checkpoint: Path) -> Iterator[TestServer]:
    """Two workers sharing one queue, batches of up to 8 gathered for 0.1 s: concurrent
    requests land in shared batches, sequential ones run alone."""
    proc = start_server(tmp_path_factory.mktemp("serve"), serve_checkpoint,
                        "--workers", "2", "--max-batch-size", "8", "--batch-timeout", "0.1", "--adapter-cache-mb", "64")
    try:
        yield proc.wait_ready()
    finally:
        stopped = proc.stop(signal.SIGINT)
        proc.kill()
    assert stopped, "SIGINT left processes of the server's group behind"
