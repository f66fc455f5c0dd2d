"""How the server's processes end: on SIGINT/SIGTERM, and when their parent is gone.

LitServe stops everything on KeyboardInterrupt in the main process. Its default SIGTERM
handling kills only the main process and orphans the HTTP servers and workers (one of them
still answering /health), so SIGTERM is turned into that same KeyboardInterrupt path. A main
process killed outright (SIGKILL) runs no code at all: for that case every inference worker
and HTTP server watches its parent and exits when it disappears.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import litserve as ls


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """In the main process, SIGTERM raises KeyboardInterrupt and SIGINT is sure to (a server
    started from a script with `&` inherits SIGINT ignored). Forked children inherit the
    SIGTERM handler until uvicorn installs its own; in them it keeps its default meaning."""
    main = os.getpid()

    def on_sigterm(signum: int, frame: object) -> None:
        if os.getpid() != main:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_term = signal.signal(signal.SIGTERM, on_sigterm)
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
