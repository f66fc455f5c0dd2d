"""Prometheus metrics aggregated over every process of one server.

A LitServe server is several processes: forked HTTP servers (requests, latency) and spawned
inference workers (batches, adapter cache). Each process keeps its own samples in memory and
a daemon thread writes them to one SQLite file every FLUSH_SECONDS; a scrape of /metrics,
answered by any HTTP process, flushes its own samples and sums every process's rows. Worker
figures are therefore up to FLUSH_SECONDS old. Counters and histograms sum over all
processes that ever ran in this server; gauges only over processes still alive.
The file lives in a per-server temporary directory: metrics restart with the server, as
Prometheus expects of counters.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METRICS_FILE = "metrics.sqlite3"
FLUSH_SECONDS = 0.5
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    buckets: tuple[float, ...] = ()


_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METRICS = {
    m.name: m
    for m in (
        Metric("tagi_http_requests_total", "counter", "HTTP requests by method, endpoint (route template) and status code."),
        Metric("tagi_http_errors_total", "counter", "HTTP responses with a 4xx or 5xx status, by method, endpoint and code."),
        Metric("tagi_http_request_duration_seconds", "histogram", "HTTP request latency by method and endpoint.", _LATENCY),
        Metric("tagi_batch_requests", "histogram", "Requests (jobs) per inference batch.", (1, 2, 4, 8, 16, 32, 64)),
        Metric("tagi_batch_rows", "histogram", "Input rows per batched forward pass (model.generate call).",
               (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)),
        Metric("tagi_batch_adapters", "histogram", "Distinct adapters in one batched forward pass (0: base model only).",
               (0, 1, 2, 3, 4, 6, 8, 16, 32)),
        Metric("tagi_forward_seconds", "histogram", "Time of one batched forward pass (generation).", _LATENCY),
        Metric("tagi_adapter_generation_seconds", "histogram", "Time to generate one adapter from its instruction.", _LATENCY),
        Metric("tagi_adapter_cache_hits_total", "counter", "Adapter lookups served from a worker's cache."),
        Metric("tagi_adapter_cache_misses_total", "counter", "Adapter lookups that had to generate the adapter."),
        Metric("tagi_adapter_cache_evictions_total", "counter", "Adapters evicted to keep a worker's cache in its bound."),
        Metric("tagi_adapter_cache_bytes", "gauge", "Bytes of adapters held in a worker's cache."),
        Metric("tagi_adapter_cache_entries", "gauge", "Adapters held in a worker's cache."),
    )
}

_Key = tuple[str, str]  # (series name, labels as sorted JSON)


class MetricsStore:
    """This process's samples. Thread-safe; flushed by a daemon thread started on first use."""

    def __init__(self, directory: Path, role: str) -> None:
        self.path = Path(directory) / METRICS_FILE
        self.role = role
        self._lock = threading.Lock()
        self._values: dict[_Key, float] = {}
        self._dirty = False
        self._thread: threading.Thread | None = None

    @property
    def source(self) -> str:
        return f"{self.role}-{os.getpid()}"

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self._add(self._key(name, "", labels), value)

    def set(self, name: str, value: float, **labels: str) -> None:
        """Absolute value: for gauges, and for counters this process counts itself (cache stats)."""
        key = self._key(name, "", labels)
        with self._lock:
            self._values[key] = float(value)
            self._dirty = True
        self._ensure_flusher()

    def observe(self, name: str, value: float, **labels: str) -> None:
        spec = METRICS[name]
        for bound in spec.buckets:  # every bucket, also the empty ones: quantiles need them all
            self._add(self._key(name, "_bucket", {**labels, "le": _number(bound)}), 1.0 if value <= bound else 0.0)
        self._add(self._key(name, "_bucket", {**labels, "le": "+Inf"}), 1.0)
        self._add(self._key(name, "_sum", labels), value)
        self._add(self._key(name, "_count", labels), 1.0)

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            rows = [(self.source, os.getpid(), series, labels, value) for (series, labels), value in self._values.items()]
            self._dirty = False
        with closing(_connect(self.path)) as db, db:
            db.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?)", rows)

    @staticmethod
    def _key(name: str, suffix: str, labels: dict[str, str]) -> _Key:
        if name not in METRICS:
            raise KeyError(f"unknown metric {name}")
        return name + suffix, json.dumps(labels, sort_keys=True)

    def _add(self, key: _Key, value: float) -> None:
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + value
            self._dirty = True
        self._ensure_flusher()

    def _ensure_flusher(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._flush_forever, name="tagi-metrics", daemon=True)
            self._thread.start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except sqlite3.Error:
                self._dirty = True  # retry next round; metrics must never break serving


_stores: dict[tuple[str, str, int], MetricsStore] = {}


def store_for(directory: Path, role: str) -> MetricsStore:
    """The store of this process for `role`: one per process, so a forked child never writes
    its parent's samples under its own name."""
    key = (str(directory), role, os.getpid())
    if key not in _stores:
        _stores[key] = MetricsStore(directory, role)
    return _stores[key]


def init_metrics_dir(directory: Path) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    with closing(_connect(Path(directory) / METRICS_FILE)) as db, db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS samples (source TEXT, pid INTEGER, series TEXT, labels TEXT, value REAL, "
            "PRIMARY KEY (source, series, labels))"
        )


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=10.0)
    db.execute("PRAGMA synchronous=OFF")  # metrics are rebuilt by the next flush; no fsync per flush
    return db


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect(directory: Path) -> dict[_Key, float]:
    """Every series summed over processes (gauges: live processes only)."""
    with closing(_connect(Path(directory) / METRICS_FILE)) as db:
        rows = db.execute("SELECT pid, series, labels, value FROM samples").fetchall()
    totals: dict[_Key, float] = {}
    alive: dict[int, bool] = {}
    for pid, series, labels, value in rows:
        if METRICS.get(series) is not None and METRICS[series].kind == "gauge":
            if pid not in alive:
                alive[pid] = _alive(pid)
            if not alive[pid]:
                continue
        totals[(series, labels)] = totals.get((series, labels), 0.0) + value
    return totals


def render(directory: Path) -> str:
    """Prometheus text exposition format 0.0.4."""
    totals = collect(directory)
    lines = []
    for spec in METRICS.values():
        series = sorted(((key, value) for key, value in totals.items() if _base_name(key[0]) == spec.name), key=_order)
        lines.append(f"# HELP {spec.name} {spec.help}")
        lines.append(f"# TYPE {spec.name} {spec.kind}")
        for (name, labels), value in series:
            lines.append(f"{name}{_format_labels(json.loads(labels))} {_number(value)}")
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """The samples of an exposition: {(series, frozenset(labels.items())): value}. Used by tests
    and the benchmark to read figures back."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = {}
        for part in _split_labels(rest.rstrip("}")):
            key, _, raw = part.partition("=")
            labels[key] = json.loads(raw)
        samples[(name, frozenset(labels.items()))] = float(value)
    return samples


def _split_labels(text: str) -> Iterable[str]:
    part, quoted, escaped = "", False, False
    for char in text:
        if char == "," and not quoted:
            yield part
            part = ""
            continue
        part += char
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
    if part:
        yield part


def _base_name(series: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and series[: -len(suffix)] in METRICS:
            return series[: -len(suffix)]
    return series


def _order(item: tuple[_Key, float]) -> tuple:
    """Series of one label set together; histogram buckets ascending, then _sum, then _count."""
    (series, labels), _ = item
    data = json.loads(labels)
    le = data.pop("le", "+Inf")
    suffix = next((i for i, s in enumerate(("_bucket", "_sum", "_count")) if series.endswith(s)), 0)
    return sorted(data.items()), suffix, float("inf") if le == "+Inf" else float(le)


def _format_labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escape = lambda v: str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')  # noqa: E731
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class RequestMetricsMiddleware:
    """Counts every HTTP request by route template (never the raw path: ids would explode the
    label set), including requests that auth rejects before routing."""

    def __init__(self, app: ASGIApp, directory: str, routes: Callable[[], list]) -> None:
        self.app = app
        self.directory = Path(directory)
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
        store = store_for(self.directory, "http")
        store.inc("tagi_http_requests_total", method=method, endpoint=endpoint, code=str(status))
        if status >= 400:
            store.inc("tagi_http_errors_total", method=method, endpoint=endpoint, code=str(status))
        store.observe("tagi_http_request_duration_seconds", seconds, method=method, endpoint=endpoint)
