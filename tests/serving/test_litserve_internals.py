"""The LitServe internals the server relies on, each where no public surface does the job (see
the comment next to each use). These fail when a LitServe upgrade moves one, instead of the
server silently losing a behaviour (an orphan that no longer stops the manager, a raw job route
back in the app, a shutdown that drains for 30 s, a dead worker's requests left hanging)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections import deque

import litserve as ls
import pytest
from fastapi.testclient import TestClient
from litserve.loops.base import LitLoop
from litserve.loops.streaming_loops import BatchedStreamingLoop, StreamingLoop
from litserve.server import response_queue_to_buffer
from litserve.utils import LitAPIStatus, ResponseBufferItem, wrap_litserve_start
from starlette.middleware.gzip import GZipMiddleware

from serving.api import JOBS_PATH, JobStreamLoop, SingleJobStreamLoop, TagiAPI, WorkerSettings
from serving.jobs import JobResult
from serving.schemas import GenerateRequest
from serving.server import TagiServer, build_server
from serving.settings import ServerSettings


@pytest.fixture(scope="module")
def started(serve_checkpoint, tmp_path_factory):
    """One worker, batching off: LitServe's single-request streaming loop (SingleJobStreamLoop)
    hands predict one job, not a list."""
    tmp = tmp_path_factory.mktemp("internals")
    server = build_server(ServerSettings(checkpoint=serve_checkpoint, state_dir=tmp / "state", max_batch_size=1))
    with wrap_litserve_start(server) as running, TestClient(running.app) as client:
        yield running, client


def test_jobs_reach_the_worker_through_the_request_queue_and_response_buffer(started):
    """serving.pipeline.JobQueue: a typed job object submitted from our route comes back as the
    worker's result object (also covers predict's single-job path, batching off)."""
    _, client = started
    created = client.post("/v1/adapters", json={"instruction": "Reverse the list."})
    assert created.status_code == 200, created.text
    generated = client.post("/v1/generate", json={"adapter_id": created.json()["adapter_id"], "inputs": ["a, b"]})
    assert generated.status_code == 200 and len(generated.json()["outputs"]) == 1


def test_a_job_put_on_the_request_queue_streams_back_into_the_response_buffer(started):
    """What serving.pipeline.JobQueue does by hand: the queue item's shape, the buffer entry
    LitServe's response_queue_to_buffer fills for its uid, the START message that names the
    worker (sent because TagiServer sets restart_workers), OK items that are our objects and
    never None (JobStreamLoop), then FINISH_STREAMING."""
    server, client = started
    assert client.get("/health").status_code == 200
    assert [f.name for f in dataclasses.fields(ResponseBufferItem)] == ["event", "response_queue", "worker_id", "response"]
    assert "response_item.worker_id = int(worker_id)" in inspect.getsource(response_queue_to_buffer)
    entry = ResponseBufferItem(event=asyncio.Event(), response_queue=deque())  # read here by polling, never awaited
    server.response_buffer["internals-uid"] = entry
    job = GenerateRequest(instruction="Reverse the list.", inputs=["a, b"], max_new_tokens=4)
    try:
        server._get_request_queue(JOBS_PATH).put((server.app.response_queue_id, "internals-uid", time.monotonic(), job))
        deadline = time.monotonic() + 60
        while not (entry.response_queue and entry.response_queue[-1][1] == LitAPIStatus.FINISH_STREAMING):
            assert time.monotonic() < deadline, "no answer through the response buffer"
            time.sleep(0.05)
    finally:
        server.response_buffer.pop("internals-uid", None)
    assert entry.worker_id == 0
    items = list(entry.response_queue)
    assert all(status == LitAPIStatus.OK and data is not None for data, status in items[:-1])
    assert isinstance(items[-2][0], JobResult) and items[-2][0].status == 200


def test_the_loop_and_the_server_hooks_tagi_overrides():
    """JobStreamLoop.put_response and TagiServer's overrides: same signatures, still called."""
    parameters = ["self", "transport", "response_queue_id", "uid", "response_data", "status", "response_type"]
    assert list(inspect.signature(LitLoop.put_response).parameters) == parameters
    assert list(inspect.signature(JobStreamLoop.put_response).parameters) == parameters
    assert list(inspect.signature(SingleJobStreamLoop.put_response).parameters) == parameters
    assert "self.put_response(" in inspect.getsource(BatchedStreamingLoop.run_batched_streaming_loop)
    assert "self.put_response(" in inspect.getsource(StreamingLoop.run_streaming_loop)
    for name in ("_start_server", "_start_worker_monitoring", "_perform_graceful_shutdown"):
        ours = list(inspect.signature(getattr(TagiServer, name)).parameters)
        theirs = list(inspect.signature(getattr(ls.LitServer, name)).parameters)
        assert ours == theirs, name
    run = inspect.getsource(ls.LitServer.run)
    assert "self._start_server(" in run
    assert "if self._monitor_workers:\n                self._start_worker_monitoring(manager, uvicorn_workers)" in run
    assert "self._perform_graceful_shutdown(manager, uvicorn_workers, shutdown_reason)" in run
    # serving.lifecycle.WorkerMonitor replaces a dead worker with this.
    assert list(inspect.signature(ls.LitServer.launch_single_inference_worker).parameters) == ["self", "lit_api", "worker_id"]
    # restart_workers is what makes a worker send START (serving.pipeline's worker_id).
    assert "loop._restart_workers = restart_workers" in inspect.getsource(ls.loops.loops.inference_worker)


def test_the_raw_job_route_is_gone(started, serve_checkpoint, tmp_path):
    """serving.server.build_server's route surgery: LitServe adds POST JOBS_PATH for every LitAPI."""
    server, client = started
    assert JOBS_PATH not in {getattr(r, "path", None) for r in server.app.router.routes}
    assert client.post(JOBS_PATH, json={"instruction": "x"}).status_code in (404, 405)
    worker = WorkerSettings(
        checkpoint=serve_checkpoint, state_dir=tmp_path, cache_bytes=0, max_adapters=10, engine="mixed", torch_threads=1
    )
    fresh = ls.LitServer(TagiAPI(worker, max_batch_size=1, batch_timeout=0.0))
    routes = {getattr(r, "path", None) for r in fresh.app.router.routes}
    assert JOBS_PATH in routes, "LitServe no longer adds the raw route: drop the surgery"


def test_workers_learn_their_id_from_litserve_worker_id():
    """serving.api.TagiAPI.setup names its worker (logs, cache metrics) from this variable."""
    from litserve.loops.loops import inference_worker

    source = inspect.getsource(inference_worker)
    assert source.index('os.environ["LITSERVE_WORKER_ID"] = str(worker_id)') < source.index("lit_api.setup(device)")


def test_the_attributes_the_server_and_its_shutdown_use(started):
    server, _ = started
    # TagiServer sets it to the drain; LitServe's uvicorn config must still read it.
    assert server.uvicorn_graceful_timeout == ServerSettings.drain_seconds
    assert "self.uvicorn_graceful_timeout" in inspect.getsource(ls.LitServer._start_server)
    # serving.lifecycle.WorkerMonitor: one status per worker, keyed "<endpoint>_<id>".
    assert dict(server.workers_setup_status) == {f"{JOBS_PATH.split('/')[-1]}_0": "ready"}
    # LitServe compresses only for APIs that do not stream: build_server adds it back, once.
    assert [m.cls for m in server.app.user_middleware].count(GZipMiddleware) == 1
    # serving.lifecycle.stop_manager: the manager process an orphaned HTTP server stops.
    assert server.transport_config.manager._process.pid > 0
    # serving.lifecycle.stop_workers: the worker processes.
    assert [p.is_alive() for p in server.inference_workers] == [True]
