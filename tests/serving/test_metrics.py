"""Metrics from several processes sum into one Prometheus exposition."""

from __future__ import annotations

import multiprocessing as mp
import os

from serving.metrics import init_metrics_dir, parse, render, store_for


def _worker_samples(directory: str) -> None:
    store = store_for(directory, "worker0")
    store.inc("tagi_adapter_cache_hits_total", 3)
    store.set("tagi_adapter_cache_bytes", 1000)
    store.observe("tagi_batch_requests", 5)
    store.flush()


def test_samples_of_processes_are_summed_and_gauges_of_dead_ones_dropped(tmp_path):
    init_metrics_dir(tmp_path)
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=_worker_samples, args=(str(tmp_path),))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0

    here = store_for(tmp_path, "worker1")
    here.inc("tagi_adapter_cache_hits_total", 2)
    here.set("tagi_adapter_cache_bytes", 24)
    here.observe("tagi_batch_requests", 1)
    here.observe("tagi_batch_requests", 3)
    here.flush()

    samples = parse(render(tmp_path))
    assert samples[("tagi_adapter_cache_hits_total", frozenset())] == 5, "counters of exited processes still count"
    assert samples[("tagi_adapter_cache_bytes", frozenset())] == 24, "a gauge of an exited process is dropped"
    bucket = lambda le: samples[("tagi_batch_requests_bucket", frozenset({("le", le)}))]  # noqa: E731
    assert (bucket("1"), bucket("2"), bucket("4"), bucket("8"), bucket("+Inf")) == (1, 1, 2, 3, 3)
    assert samples[("tagi_batch_requests_count", frozenset())] == 3
    assert samples[("tagi_batch_requests_sum", frozenset())] == 9


def test_exposition_format_and_label_escaping(tmp_path):
    init_metrics_dir(tmp_path)
    store = store_for(tmp_path, "http")
    store.inc("tagi_http_requests_total", method="GET", endpoint='/odd"path\\', code="200")
    store.flush()
    text = render(tmp_path)
    assert "# TYPE tagi_http_requests_total counter" in text
    assert "# TYPE tagi_http_request_duration_seconds histogram" in text
    assert 'endpoint="/odd\\"path\\\\"' in text
    labels = frozenset({("method", "GET"), ("endpoint", '/odd"path\\'), ("code", "200")})
    assert parse(text)[("tagi_http_requests_total", labels)] == 1


def test_one_store_per_process_and_role(tmp_path):
    assert store_for(tmp_path, "http") is store_for(tmp_path, "http")
    assert store_for(tmp_path, "http") is not store_for(tmp_path, "worker0")
    assert store_for(tmp_path, "http").source == f"http-{os.getpid()}"
