"""A `tagi serve` child for the tests: serving.launch.LocalServer plus what only tests need
(a client with the server's key, any signal to the main process or the whole group)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx2

from serving.launch import LocalServer


class TestServer(LocalServer):
    __test__ = False  # not a test class, whatever its name

    def __init__(self, checkpoint: Path, state_dir: Path, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(checkpoint, state_dir, log_path, *args, env=env)
        self.api_key = (env or {}).get("LIT_SERVER_API_KEY")

    def client(self) -> httpx2.Client:
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        return httpx2.Client(base_url=self.url, timeout=60.0, headers=headers)

    def stop(self, sig: int, to_group: bool = True, timeout: float = 30.0) -> bool:
        """Signal the server (its whole group, or its main process only); True when every
        process of the group is gone within `timeout`."""
        try:
            if to_group:
                os.killpg(self.pgid, sig)
            else:
                os.kill(self.process.pid, sig)
        except ProcessLookupError:
            pass
        return self.wait_gone(timeout)


def start_server(
    tmp: Path, checkpoint: Path, *args: str, env: dict[str, str] | None = None, state_dir: Path | None = None
) -> TestServer:
    return TestServer(checkpoint, state_dir or tmp / "state", tmp / f"server-{time.monotonic_ns()}.log", *args, env=env)
