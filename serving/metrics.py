"""Prometheus metrics of every process of one server, through prometheus_client's multiprocess mode.

A LitServe server is several processes: forked HTTP servers (requests, latency) and spawned
inference workers (batches, adapter cache). prometheus_client's multiprocess mode is made for
that: each process writes its samples to memory-mapped files in PROMETHEUS_MULTIPROC_DIR, and
a scrape of /metrics, answered by any HTTP process, merges every file (MultiProcessCollector).
Counters and histograms sum over every process that ever ran in this server; the cache gauges
have one series per worker (label `worker`, LitServe's worker id) summed over live processes
only (`livesum`), so a restarted worker replaces its dead predecessor.

Why the directory is chosen when this module is imported: prometheus_client picks its value
class (in memory or in files) once, when it is first imported, from that environment
variable. So this module sets PROMETHEUS_MULTIPROC_DIR before it imports prometheus_client, if
nobody did: to a fresh temporary directory, removed at exit by the process that made it.
Forked HTTP servers inherit it, spawned workers inherit the environment, so one server's
processes share one directory. An operator may set PROMETHEUS_MULTIPROC_DIR (as
prometheus_client's documentation says); `tagi serve` then removes the files of earlier runs
at start, as that documentation requires, since counters must restart with the server.

Dead processes: a worker can end without running any code (LitServe terminates workers,
SIGKILL, out of memory), so `mark_process_dead` is called at scrape time for every process
whose live-gauge file is left but whose pid is gone, not from an exit hook.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_OPERATOR_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR" in os.environ
if not _OPERATOR_DIRECTORY:
    _made_by = os.getpid()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tagi-metrics-")

    @atexit.register
    def _remove_directory() -> None:
        if os.getpid() == _made_by:  # never from a forked child that happens to run exit hooks
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


import prometheus_client.values  # noqa: E402 - the environment must be set first (see above)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest  # noqa: E402
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead  # noqa: E402
from starlette.routing import Match  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from serving.cache import CacheStats  # noqa: E402

if not prometheus_client.values.ValueClass._multiprocess:
    raise RuntimeError(
        "prometheus_client was imported before serving.metrics set PROMETHEUS_MULTIPROC_DIR: "
        "its metrics would stay in one process; import serving.metrics first"
    )

DIRECTORY = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The classic text format: what every Prometheus server and our tests read."""

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HTTP_REQUESTS = Counter(
    "tagi_http_requests_total",
    "HTTP requests by method, endpoint (route template) and status code.",
    ["method", "endpoint", "code"],
)
HTTP_ERRORS = Counter(
    "tagi_http_errors_total",
    "HTTP responses with a 4xx or 5xx status, by method, endpoint and code.",
    ["method", "endpoint", "code"],
)
HTTP_LATENCY = Histogram(
    "tagi_http_request_duration_seconds", "HTTP request latency by method and endpoint.", ["method", "endpoint"], buckets=_LATENCY
)
BATCH_REQUESTS = Histogram("tagi_batch_requests", "Requests (jobs) per inference batch.", buckets=(1, 2, 4, 8, 16, 32, 64))
BATCH_ROWS = Histogram(
    "tagi_batch_rows",
    "Input rows per batched forward pass (model.generate call).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BATCH_ADAPTERS = Histogram(
    "tagi_batch_adapters",
    "Distinct adapters in one batched forward pass (0: base model only).",
    buckets=(0, 1, 2, 3, 4, 6, 8, 16, 32),
)
FORWARD_SECONDS = Histogram("tagi_forward_seconds", "Time of one batched forward pass (generation).", buckets=_LATENCY)
ADAPTER_SECONDS = Histogram(
    "tagi_adapter_generation_seconds", "Time to generate one adapter from its instruction.", buckets=_LATENCY
)
CACHE_HITS = Counter("tagi_adapter_cache_hits_total", "Adapter lookups served from a worker's cache.")
CACHE_MISSES = Counter("tagi_adapter_cache_misses_total", "Adapter lookups that had to generate the adapter.")
CACHE_EVICTIONS = Counter("tagi_adapter_cache_evictions_total", "Adapters evicted to keep a worker's cache in its bound.")
CACHE_BYTES = Gauge(
    "tagi_adapter_cache_bytes", "Bytes of adapters held in a worker's cache.", ["worker"], multiprocess_mode="livesum"
)
CACHE_ENTRIES = Gauge("tagi_adapter_cache_entries", "Adapters held in a worker's cache.", ["worker"], multiprocess_mode="livesum")

_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db")


def wipe_earlier_runs() -> None:
    """At server start: remove what processes of an earlier run left in an operator-chosen
    directory. A directory this module made is fresh, and may hold this process's own live
    files (a test process that starts servers in-process), so it is left alone."""
    if not _OPERATOR_DIRECTORY:
        return
    for path in DIRECTORY.glob("*.db"):
        if not path.stem.endswith(f"_{os.getpid()}"):
            path.unlink(missing_ok=True)


def render() -> bytes:
    """Every process's samples merged, in the Prometheus text format."""
    for path in DIRECTORY.glob("gauge_live*.db"):
        match = _LIVE_GAUGE_FILE.fullmatch(path.name)
        if match and not _alive(int(match.group(1))):
            mark_process_dead(int(match.group(1)), str(DIRECTORY))
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(DIRECTORY))
    return generate_latest(registry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CacheReporter:
    """Publishes one worker cache's statistics. The cache counts hits, misses and evictions
    itself; Prometheus counters only go up, so each report adds what changed since the last."""

    def __init__(self, worker: str) -> None:
        self._last = CacheStats(0, 0, 0, 0, 0)
        self._bytes = CACHE_BYTES.labels(worker=worker)
        self._entries = CACHE_ENTRIES.labels(worker=worker)

    def report(self, stats: CacheStats) -> None:
        CACHE_HITS.inc(stats.hits - self._last.hits)
        CACHE_MISSES.inc(stats.misses - self._last.misses)
        CACHE_EVICTIONS.inc(stats.evictions - self._last.evictions)
        self._bytes.set(stats.bytes)
        self._entries.set(stats.entries)
        self._last = stats


class RequestMetricsMiddleware:
    """Counts every HTTP request by route template (never the raw path: ids would explode the
    label set), including requests that auth rejects before routing."""

    def __init__(self, app: ASGIApp, routes: Callable[[], list]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app raises before responding

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self._record(scope, status, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        endpoint = "unmatched"
        for route in self.routes():
            if hasattr(route, "path") and route.matches(scope)[0] == Match.FULL:
                endpoint = route.path
                break
        method = scope.get("method", "")
        HTTP_REQUESTS.labels(method=method, endpoint=endpoint, code=str(status)).inc()
        if status >= 400:
            HTTP_ERRORS.labels(method=method, endpoint=endpoint, code=str(status)).inc()
        HTTP_LATENCY.labels(method=method, endpoint=endpoint).observe(seconds)
