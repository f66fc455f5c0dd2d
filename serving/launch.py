"""Start `tagi serve` as a child on a free loopback port, and stop it with nothing left behind.

Product code because `tagi bench serve` measures real servers, each started and stopped this
way (tests/serving/server_process.py adds what only the tests need: other signals, clients).
The server runs in its own process session, so it can be signalled and reaped as a whole
group: main process, HTTP servers, inference workers and multiprocessing helpers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

STOP_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class LocalServer:
    """`tagi serve --checkpoint C --state-dir S --port <free> ARGS` on 127.0.0.1, logging to a file."""

    def __init__(self, checkpoint: Path, state_dir: Path, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        script = shutil.which("tagi", path=str(Path(sys.executable).parent))
        command = [
            *([script] if script else [sys.executable, "-m", "hypernet.cli"]),
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--state-dir",
            str(state_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *args,
        ]
        # The child sees exactly the key it is given, never one inherited from this process, and
        # keeps its metrics in its own directory, not in this process's.
        inherited = {k: v for k, v in os.environ.items() if k not in ("LIT_SERVER_API_KEY", "PROMETHEUS_MULTIPROC_DIR")}
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=inherited | (env or {}), start_new_session=True
        )
        self.pgid = self.process.pid  # a session leader's pid is its process group id

    def wait_ready(self, timeout: float = 120.0) -> LocalServer:
        """Poll /health (bounded); raise with the server's log if it dies or never gets ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2.0) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"server not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def wait_gone(self, timeout: float = STOP_SECONDS) -> bool:
        """True when every process of the group has exited within `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        while time.monotonic() < deadline and group_alive(self.pgid):
            time.sleep(0.1)
        return not group_alive(self.pgid)

    def close(self) -> bool:
        """Ctrl+C to the whole group (the graceful path), then SIGKILL whatever is left; True
        when nothing had to be killed."""
        try:
            os.killpg(self.pgid, signal.SIGINT)
        except ProcessLookupError:
            pass
        stopped = self.wait_gone()
        self.kill()
        return stopped

    def kill(self) -> None:
        """SIGKILL whatever is left of the group and close the log."""
        if group_alive(self.pgid):
            os.killpg(self.pgid, signal.SIGKILL)
        self.process.wait(timeout=STOP_SECONDS)
        self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
