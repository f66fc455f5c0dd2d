"""How the server's processes end (SIGINT, SIGTERM, a parent gone) and how a dead worker is replaced.

LitServe stops everything on KeyboardInterrupt in the main process. Its default SIGTERM
handling kills only the main process and orphans the HTTP servers and workers (one of them
still answering /health), so SIGTERM is turned into that same KeyboardInterrupt path, marked as
a drain (serving.server.TagiServer): the HTTP servers stop accepting and finish what they hold,
for up to --drain-seconds, while the workers keep serving them; only then do the workers stop. A
main process killed outright (SIGKILL) runs no code at all: for that case every inference worker
and HTTP server watches its parent and exits when it disappears.

A worker that dies (kill -9, out of memory) is noticed at once by WorkerMonitor, in the main
process: LitServe's own monitor polls every 2 s and, unless told to restart workers, shuts the
whole server down; told to restart, it fails the dead worker's requests only in the main
process's response buffer, which no HTTP server reads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from multiprocessing import connection
from multiprocessing.process import BaseProcess

import litserve as ls
from litserve.utils import WorkerSetupStatus

from serving.pipeline import WorkerDeaths

log = logging.getLogger("tagi.serving")


@contextmanager
def sigterm_as_interrupt(on_sigterm: Callable[[], None]) -> Iterator[None]:
    """In the main process, SIGTERM calls `on_sigterm` then raises KeyboardInterrupt, and SIGINT
    is sure to raise it (a server started from a script with `&` inherits SIGINT ignored). Forked
    children inherit the SIGTERM handler until uvicorn installs its own; in them it keeps its
    default meaning."""
    main = os.getpid()

    def on_signal(signum: int, frame: object) -> None:
        if os.getpid() != main:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        on_sigterm()
        raise KeyboardInterrupt

    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def exit_when_orphaned(before_exit: Callable[[], None] | None = None, poll_s: float = 1.0) -> None:
    """Start a daemon thread that ends this process once its parent has died."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        if before_exit is not None:
            before_exit()
        os._exit(0)

    threading.Thread(target=watch, name="tagi-orphan-watch", daemon=True).start()


def stop_manager(server: ls.LitServer) -> None:
    """Stop LitServe's multiprocessing manager. It is forked after the listening socket is
    bound, so if it outlives the main process, connections are accepted by the kernel and then
    hang: an orphaned HTTP server takes it down before exiting.

    LitServe internal (`transport_config.manager`) and a multiprocessing one (`_process`): no
    public surface reaches the manager, and `manager.shutdown()` only works in the process that
    started it. Read with getattr so that an orphan still exits if they move; the attributes are
    checked by tests/serving/test_litserve_internals.py."""
    manager = getattr(server.transport_config, "manager", None)
    process = getattr(manager, "_process", None)
    if process is not None and process.pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)


def stop_workers(server: ls.LitServer) -> None:
    """Stop the inference workers when LitServe's own shutdown never started (interrupted
    during startup): otherwise the interpreter would wait for them forever at exit. LitServe
    internal (`inference_workers`, no public accessor); checked by test_litserve_internals."""
    for process in getattr(server, "inference_workers", []):
        if process.is_alive():
            process.terminate()
        process.join(timeout=5)
        if process.is_alive():
            process.kill()


def ignore_stop_signals() -> None:
    """During shutdown: a second Ctrl+C or SIGTERM must not abort it halfway, which would leave
    workers behind (the drain is bounded anyway). Main thread only, as Python requires."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stop_http_servers(processes: Iterable[BaseProcess], sockets: list[socket.socket], grace_s: float) -> None:
    """Ask every HTTP server to shut down at once (SIGTERM: uvicorn stops accepting, closes idle
    connections and waits for in-flight requests, up to its graceful timeout), refuse new
    connections, wait up to `grace_s` for them all, then kill what is left.

    The listening socket is shared by every process forked after it was bound, this one and
    LitServe's multiprocessing manager included, so the kernel would go on accepting (and
    leaving unanswered) connections until the last of them exits. shutdown() stops it listening
    in all of them at once; it must wait until each HTTP server has closed its own copy (after
    removing it from its event loop), or that server's accept loop would spin on the dead socket.
    Connections that reach the kernel in that short wait are reset rather than refused."""
    processes = [p for p in processes if p.is_alive()]
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace_s
    inodes = {os.fstat(sock.fileno()).st_ino for sock in sockets if sock.fileno() >= 0}
    while any(p.is_alive() and _holds_socket(p.pid, inodes) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.02)
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.warning("HTTP server %s still busy after %g s: killed", process.name, grace_s)
            process.kill()
            process.join()


def _holds_socket(pid: int | None, inodes: set[int]) -> bool:
    """Whether process `pid` still has one of these sockets open (Linux /proc)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in {f"socket:[{inode}]" for inode in inodes}:
                return True
    return False


class WorkerMonitor:
    """A main-process thread that replaces an inference worker the moment it dies.

    It blocks on the workers' process sentinels (multiprocessing.connection.wait), so a death is
    seen at once. It then (1) counts the death in WorkerDeaths, so that the HTTP servers retry or
    fail the jobs that worker had taken instead of waiting for them, (2) marks it STARTING in
    workers_setup_status, so /health answers 503 from then until the replacement is READY, and
    (3) starts the replacement with LitServe's launch_single_inference_worker. A worker whose
    setup failed (status ERROR) is not replaced: it would fail again; /health stays 503.

    LitServe internals: `inference_workers` (index = worker id, one LitAPI),
    `launch_single_inference_worker` and `workers_setup_status` keyed "<endpoint>_<id>" (checked
    by tests/serving/test_litserve_internals.py)."""

    def __init__(self, server: ls.LitServer, api: ls.LitAPI, deaths: WorkerDeaths) -> None:
        self._server = server
        self._api = api
        self._deaths = deaths
        self._endpoint = api.api_path.split("/")[-1]
        self._wake_read, self._wake_write = connection.Pipe(duplex=False)
        self._stopping = False
        self._given_up: set[int] = set()
        self._thread = threading.Thread(target=self._watch, name="tagi-worker-monitor", daemon=True)

    def start(self) -> WorkerMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Before the workers are stopped on purpose, so that none is replaced."""
        self._stopping = True
        self._wake_write.send(None)
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stopping:
            workers = dict(enumerate(self._server.inference_workers))
            watched = {p.sentinel: i for i, p in workers.items() if i not in self._given_up}
            ready = connection.wait([*watched, self._wake_read])
            if self._stopping:
                return
            for sentinel in ready:
                if sentinel in watched:
                    self._replace(watched[sentinel], workers[watched[sentinel]])

    def _replace(self, worker: int, process: BaseProcess) -> None:
        self._deaths.record(worker)
        key = f"{self._endpoint}_{worker}"
        if self._server.workers_setup_status.get(key) == WorkerSetupStatus.ERROR:
            log.error("inference worker %d failed to start (see above): not replaced; /health answers 503", worker)
            self._given_up.add(worker)
            return
        self._server.workers_setup_status[key] = WorkerSetupStatus.STARTING  # /health: 503 now, not after the spawn
        process.join()
        log.error("inference worker %d (pid %s) died, exit code %s: replacing it", worker, process.pid, process.exitcode)
        self._server.inference_workers[worker] = self._server.launch_single_inference_worker(self._api, worker)
