"""Real `tagi serve` processes on loopback for the serving tests.

Each server runs in its own process session (tests/serving/server_process.py), so teardown
signals and reaps the whole group and checks that nothing is left. Servers are
module-scoped: starting one costs several seconds.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import serving.metrics  # noqa: F401 - first: prometheus_client picks its multiprocess mode when first imported
from tests.serving.server_process import TestServer, start_server


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
    proc = start_server(
        tmp_path_factory.mktemp("serve"),
        serve_checkpoint,
        "--workers",
        "2",
        "--max-batch-size",
        "8",
        "--batch-timeout",
        "0.1",
        "--adapter-cache-mb",
        "64",
    )
    try:
        yield proc.wait_ready()
    finally:
        stopped = proc.stop(signal.SIGINT)
        proc.kill()
    assert stopped, "SIGINT left processes of the server's group behind"
