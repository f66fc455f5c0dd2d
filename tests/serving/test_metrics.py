"""Metrics from several processes sum into one Prometheus exposition (prometheus_client's
multiprocess mode). The pytest process shares its metrics directory with every in-process
test, so each test compares a scrape after with one before."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import subprocess
import sys

from serving import metrics
from tests.serving.promtext import parse, value


def _worker_samples() -> None:
    metrics.CACHE_HITS.inc(3)
    metrics.CACHE_BYTES.labels(worker="0").set(1000)
    metrics.BATCH_REQUESTS.observe(5)


def scrape() -> dict:
    return parse(metrics.render().decode())


def test_samples_of_processes_are_summed_and_gauges_of_dead_ones_dropped():
    before = scrape()
    child = mp.get_context("spawn").Process(target=_worker_samples)
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0

    metrics.CACHE_HITS.inc(2)
    metrics.CACHE_BYTES.labels(worker="0").set(24)
    metrics.BATCH_REQUESTS.observe(1)
    metrics.BATCH_REQUESTS.observe(3)

    samples = scrape()
    delta = lambda name, **labels: value(samples, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert delta("tagi_adapter_cache_hits_total") == 5, "counters of exited processes still count"
    assert value(samples, "tagi_adapter_cache_bytes") == 24, "a gauge of an exited process is dropped"
    bucket = lambda le: delta("tagi_batch_requests_bucket", le=le)  # noqa: E731
    assert (bucket("1.0"), bucket("2.0"), bucket("4.0"), bucket("8.0"), bucket("+Inf")) == (1, 1, 2, 3, 3)
    assert delta("tagi_batch_requests_count") == 3
    assert delta("tagi_batch_requests_sum") == 9


def test_exposition_format_and_label_escaping():
    metrics.HTTP_REQUESTS.labels(method="GET", endpoint='/odd"path\\', code="200").inc()
    text = metrics.render().decode()
    assert "# TYPE tagi_http_requests_total counter" in text
    assert "# TYPE tagi_batch_requests histogram" in text
    assert 'endpoint="/odd\\"path\\\\"' in text
    labels = frozenset({("method", "GET"), ("endpoint", '/odd"path\\'), ("code", "200")})
    assert parse(text)[("tagi_http_requests_total", labels)] == 1


def _forked_child() -> None:
    metrics.CACHE_MISSES.inc(2)


def test_a_forked_process_counts_only_its_own_samples():
    """LitServe forks its HTTP servers from a process that may have counted already: a child must
    start from zero in its own file, not copy the parent's count into it."""
    before = scrape()
    metrics.CACHE_MISSES.inc(1)
    child = mp.get_context("fork").Process(target=_forked_child)
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert value(scrape(), "tagi_adapter_cache_misses_total") - value(before, "tagi_adapter_cache_misses_total") == 3


def test_a_server_start_clears_earlier_runs_only_from_an_operator_directory(tmp_path):
    stale = tmp_path / "counter_1.db"
    stale.write_bytes(b"")
    code = "import serving.metrics as m; m.wipe_earlier_runs()"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}, check=True)
    assert not stale.exists(), "an operator's directory keeps samples of an earlier run"

    # This process's own directory (made by serving.metrics) holds live files of this process and
    # of the servers it starts in-process: a server start must leave them all.
    metrics.CACHE_MISSES.inc(1)
    other = metrics.DIRECTORY / "counter_1.db"  # as if another live process wrote it
    shutil.copy(metrics.DIRECTORY / f"counter_{os.getpid()}.db", other)
    try:
        metrics.wipe_earlier_runs()
        assert other.exists() and (metrics.DIRECTORY / f"counter_{os.getpid()}.db").exists()
    finally:
        other.unlink(missing_ok=True)
