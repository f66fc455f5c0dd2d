"""Build and run the LitServe server: one worker-backed LitAPI, the public routes, metrics,
auth, a dead worker replaced at once, and a shutdown that leaves no process behind.

Process layout (LitServe's): the main process spawns `workers` inference workers (each loads
the model) and forks HTTP servers that share the listening socket. SIGINT (Ctrl+C) runs
LitServe's graceful shutdown; SIGTERM is turned into the same path, because LitServe's
default SIGTERM handling kills only the main process and orphans its children, and drains:
in-flight requests finish (up to --drain-seconds) before the workers stop.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import FastAPI
from starlette.middleware.gzip import GZipMiddleware

from serving.api import JOBS_PATH, TagiAPI, WorkerSettings
from serving.auth import ApiKeyMiddleware
from serving.checkpoint import read_checkpoint
from serving.errors import install_error_handlers
from serving.lifecycle import (
    WorkerMonitor,
    exit_when_orphaned,
    ignore_stop_signals,
    sigterm_as_interrupt,
    stop_http_servers,
    stop_manager,
    stop_workers,
)
from serving.metrics import RequestMetricsMiddleware, wipe_earlier_runs
from serving.openapi import install_openapi
from serving.pipeline import JobQueue, WorkerDeaths
from serving.playground import add_playground
from serving.registry import Registry
from serving.routes import add_routes
from serving.schemas import MAX_INPUTS, MAX_NEW_TOKENS
from serving.settings import INTERRUPT_GRACE_S, ServerSettings
from serving.slowclients import protocol_class

MAX_PAYLOAD_BYTES = 4 * 2**20  # LitServe documents "4MB" strings, but its middleware compares ints
log = logging.getLogger("tagi.serving")


class TagiServer(ls.LitServer):
    """LitServer with what production needs of its lifecycle: a dead inference worker replaced
    at once (serving.lifecycle.WorkerMonitor instead of LitServe's monitor) and a SIGTERM that
    drains instead of cutting in-flight requests.

    LitServe internals, overridden because LitServer has no hooks for these (each override's
    signature and call site are checked by tests/serving/test_litserve_internals.py):
    `_start_server` (the one place the listening sockets are seen), `_start_worker_monitoring`
    (called once the workers and HTTP servers run) and `_perform_graceful_shutdown`.
    `restart_workers=True` is what makes LitServe's loops tell the HTTP servers which worker took
    each job (the START message serving.pipeline relies on); the restarting itself is ours."""

    def __init__(self, api: TagiAPI, deaths: WorkerDeaths, drain_seconds: float, **kwargs: Any) -> None:
        super().__init__(api, restart_workers=True, **kwargs)
        self.deaths = deaths
        self.drain_seconds = drain_seconds
        self.draining = False
        self._sockets: list[socket.socket] = []
        self._monitor: WorkerMonitor | None = None
        # LitServe internal: the attribute its uvicorn config reads for how long an HTTP server
        # waits for in-flight requests on shutdown (LitServer takes no argument for it). The
        # drain's bound; Ctrl+C bounds it shorter from this process. (test_litserve_internals)
        self.uvicorn_graceful_timeout = drain_seconds

    def drain(self) -> None:
        """Called on SIGTERM: the shutdown that follows waits drain_seconds for in-flight requests."""
        self.draining = True

    def _start_server(
        self,
        port: int,
        num_uvicorn_servers: int,
        log_level: str,
        sockets: list[socket.socket],
        uvicorn_worker_type: str,
        **kwargs: Any,
    ) -> dict[int, BaseProcess]:
        self._sockets = list(sockets)
        return super()._start_server(port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs)

    def _start_worker_monitoring(self, manager: Any, uvicorn_workers: dict[int, BaseProcess]) -> None:
        self._monitor = WorkerMonitor(self, self.lit_api, self.deaths).start()

    def _perform_graceful_shutdown(
        self, manager: Any, uvicorn_workers: dict[int, BaseProcess], shutdown_reason: str = "normal"
    ) -> None:
        """HTTP servers first, all at once, bounded by the drain (SIGTERM) or INTERRUPT_GRACE_S;
        the workers serve them until they are gone; then LitServe stops workers and manager."""
        ignore_stop_signals()
        grace = self.drain_seconds if self.draining else INTERRUPT_GRACE_S
        if self.draining:
            log.info("SIGTERM: refusing new connections, draining in-flight requests for up to %g s", grace)
        stop_http_servers(uvicorn_workers.values(), self._sockets, grace)
        if self._monitor is not None:
            self._monitor.stop()
        super()._perform_graceful_shutdown(manager, {}, shutdown_reason)


def build_server(settings: ServerSettings) -> TagiServer:
    """A ready-to-run LitServer (not started). Raises CheckpointError for a bad checkpoint."""
    checkpoint = read_checkpoint(settings.checkpoint)
    state_dir = Path(settings.state_dir).resolve()
    registry = Registry(state_dir, checkpoint.fingerprint, settings.max_adapters)
    worker = WorkerSettings(
        checkpoint=checkpoint.path,
        state_dir=state_dir,
        cache_bytes=int(settings.adapter_cache_mb * 2**20),
        max_adapters=settings.max_adapters,
        engine=settings.engine,
        torch_threads=settings.threads_per_worker(),
    )
    api = TagiAPI(worker, max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout)
    # LitServe adds its middlewares in order, each one outside the previous: auth is innermost,
    # so the metrics middleware also counts the 401s.
    middlewares: list = [(ApiKeyMiddleware, {"api_key": settings.api_key})] if settings.api_key else []
    # The metrics middleware looks the routes up per request, by then `server` exists.
    middlewares.append((RequestMetricsMiddleware, {"routes": lambda: server.app.routes}))
    # LitServe compresses responses only for APIs that do not stream; ours streams to the HTTP
    # side, not necessarily to clients. Starlette's gzip leaves text/event-stream alone.
    middlewares.append((GZipMiddleware, {"minimum_size": 1000}))
    # Created before LitServe forks the HTTP servers, so they share it with this process.
    deaths = WorkerDeaths(settings.workers)
    server = TagiServer(
        api,
        deaths,
        settings.drain_seconds,
        workers_per_device=settings.workers,
        timeout=settings.timeout,
        max_payload_size=MAX_PAYLOAD_BYTES,
        middlewares=middlewares,
        model_metadata={
            **checkpoint.describe(),
            "engine": settings.engine,
            "max_batch_size": settings.max_batch_size,
            "batch_timeout": settings.batch_timeout,
            "adapter_cache_mb": settings.adapter_cache_mb,
            "max_adapters": settings.max_adapters,
            "max_inputs": MAX_INPUTS,
            "max_new_tokens": MAX_NEW_TOKENS,
            "auth": bool(settings.api_key),
        },
    )
    # LitServe internal (route surgery): every LitAPI gets a raw POST route that hands its body to
    # the worker unvalidated, and LitServe has no option to leave it out; jobs must come only
    # through the typed routes, which validate them first. (test_litserve_internals)
    server.app.router.routes = [r for r in server.app.router.routes if getattr(r, "path", None) != JOBS_PATH]
    _exit_http_servers_when_orphaned(server)
    install_error_handlers(server.app)
    install_openapi(server.app, keyed=bool(settings.api_key))
    add_routes(server.app, JobQueue(server, api, settings.timeout, deaths), registry)
    add_playground(server.app)
    return server


def _exit_http_servers_when_orphaned(server: ls.LitServer) -> None:
    """Each forked HTTP server runs the app's lifespan once at startup: start its watch there."""
    lifespan = server.app.router.lifespan_context

    @asynccontextmanager
    async def watched(app: FastAPI) -> AsyncIterator[None]:
        exit_when_orphaned(before_exit=lambda: stop_manager(server))
        async with lifespan(app) as state:
            yield state

    server.app.router.lifespan_context = watched


def serve(settings: ServerSettings) -> None:
    """Run until SIGINT or SIGTERM, then stop every process of the server."""
    wipe_earlier_runs()  # counters restart with the server
    try:
        server = build_server(settings)
        log.info(
            "serving %s on http://%s:%d with %d worker(s), batches of up to %d, state in %s%s",
            settings.checkpoint,
            settings.host,
            settings.port,
            settings.workers,
            settings.max_batch_size,
            settings.state_dir,
            ", API key required" if settings.api_key else "",
        )
        with sigterm_as_interrupt(server.drain):
            try:
                server.run(
                    host=settings.host,
                    port=settings.port,
                    generate_client_file=False,
                    log_level="warning",
                    # uvicorn.Config options, passed on by LitServe: deadlines for slow clients
                    http=protocol_class(settings.header_timeout, settings.body_timeout),
                    timeout_keep_alive=settings.keep_alive_timeout,
                )
            except (KeyboardInterrupt, RuntimeError):
                # Interrupted, or workers failed, before LitServe's own shutdown took over.
                stop_workers(server)
                raise
    except KeyboardInterrupt:
        log.info("stopped")
