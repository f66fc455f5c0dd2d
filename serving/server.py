"""Build and run the LitServe server: one worker-backed LitAPI, the public routes, metrics,
auth, and a shutdown that leaves no process behind.

Process layout (LitServe's): the main process spawns `workers` inference workers (each loads
the model) and forks HTTP servers that share the listening socket. SIGINT (Ctrl+C) runs
LitServe's graceful shutdown; SIGTERM is turned into the same path, because LitServe's
default SIGTERM handling kills only the main process and orphans its children.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import litserve as ls
from fastapi import FastAPI

from serving.api import JOBS_PATH, TagiAPI, WorkerSettings
from serving.auth import ApiKeyMiddleware
from serving.checkpoint import read_checkpoint
from serving.errors import install_error_handlers
from serving.lifecycle import exit_when_orphaned, sigterm_as_interrupt, stop_manager, stop_workers
from serving.metrics import RequestMetricsMiddleware, wipe_earlier_runs
from serving.playground import add_playground
from serving.registry import Registry
from serving.routes import JobQueue, add_routes
from serving.schemas import MAX_INPUTS, MAX_NEW_TOKENS
from serving.settings import ServerSettings

MAX_PAYLOAD_BYTES = 4 * 2**20  # LitServe documents "4MB" strings, but its middleware compares ints
log = logging.getLogger("tagi.serving")


def build_server(settings: ServerSettings) -> ls.LitServer:
    """A ready-to-run LitServer (not started). Raises CheckpointError for a bad checkpoint."""
    checkpoint = read_checkpoint(settings.checkpoint)
    state_dir = Path(settings.state_dir).resolve()
    registry = Registry(state_dir, checkpoint.fingerprint)
    worker = WorkerSettings(
        checkpoint=checkpoint.path,
        state_dir=state_dir,
        cache_bytes=int(settings.adapter_cache_mb * 2**20),
        engine=settings.engine,
        torch_threads=settings.threads_per_worker(),
    )
    api = TagiAPI(worker, max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout)
    # LitServe adds its middlewares in order, each one outside the previous: auth is innermost,
    # so the metrics middleware also counts the 401s.
    middlewares: list = [(ApiKeyMiddleware, {"api_key": settings.api_key})] if settings.api_key else []
    # The metrics middleware looks the routes up per request, by then `server` exists.
    middlewares.append((RequestMetricsMiddleware, {"routes": lambda: server.app.routes}))
    server = ls.LitServer(
        api,
        workers_per_device=settings.workers,
        timeout=settings.timeout,
        max_payload_size=MAX_PAYLOAD_BYTES,
        middlewares=middlewares,
        model_metadata={
            **checkpoint.describe(),
            "engine": settings.engine,
            "state_dir": str(state_dir),
            "max_batch_size": settings.max_batch_size,
            "batch_timeout": settings.batch_timeout,
            "adapter_cache_mb": settings.adapter_cache_mb,
            "max_inputs": MAX_INPUTS,
            "max_new_tokens": MAX_NEW_TOKENS,
            "auth": bool(settings.api_key),
        },
    )
    # LitServe internal: the attribute its uvicorn config reads; LitServer takes no argument for
    # it, and 30 s of draining per HTTP process makes Ctrl+C feel hung. (test_litserve_internals)
    server.uvicorn_graceful_timeout = 5
    # LitServe internal (route surgery): every LitAPI gets a raw POST route that hands its body to
    # the worker unvalidated, and LitServe has no option to leave it out; jobs must come only
    # through the typed routes, which validate them first. (test_litserve_internals)
    server.app.router.routes = [r for r in server.app.router.routes if getattr(r, "path", None) != JOBS_PATH]
    _exit_http_servers_when_orphaned(server)
    install_error_handlers(server.app)
    add_routes(server.app, JobQueue(server, api, settings.timeout), registry, state_dir)
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
        with sigterm_as_interrupt():
            try:
                server.run(host=settings.host, port=settings.port, generate_client_file=False, log_level="warning")
            except (KeyboardInterrupt, RuntimeError):
                # Interrupted, or workers failed, before LitServe's own shutdown took over.
                stop_workers(server)
                raise
    except KeyboardInterrupt:
        log.info("stopped")
