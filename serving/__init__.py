"""tagi's server: generate adapters from instructions and serve them from one shared base model.

Where things are:
    settings.py    ServerSettings: every `tagi serve` setting and its default
    schemas.py     request/response bodies and limits (pydantic); a request is also its job
    errors.py      the one error format, validation messages
    jobs.py        what crosses between HTTP processes and inference workers
    pipeline.py    JobQueue: submit a job, follow its stream of results; worker-death counters
    service.py     AdapterService: a batch of jobs -> results, one forward pass per batch
    baseline.py    the PEFT swap-per-request engine (benchmark baseline)
    cache.py       LRU cache bounded in bytes
    registry.py    SQLite registry of adapters (id -> instruction, metadata), bounded, least recently used go
    archive.py     PEFT .tar.gz exports, built per download
    metrics.py     Prometheus metrics of every process (prometheus_client, multiprocess mode)
    auth.py        optional API key
    checkpoint.py  checkpoint config and fingerprint without torch
    api.py         the LitAPI run by each inference worker
    routes.py      the public HTTP routes
    openapi.py     the OpenAPI document: error statuses, keys, text routes
    server.py      build and run the LitServer; signals
    lifecycle.py   shutdown and drain, orphan watch, the monitor that replaces a dead worker
    cli.py         `tagi serve`, `tagi bench serve`
    bench.py       the serving benchmark
    launch.py      start and stop a `tagi serve` child (for the benchmark)
"""
