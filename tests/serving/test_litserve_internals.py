"""The LitServe internals the server relies on, each where no public surface does the job (see
the comment next to each use). These fail when a LitServe upgrade moves one, instead of the
server silently losing a behaviour (an orphan that no longer stops the manager, a raw job route
back in the app, a shutdown that drains for 30 s)."""

from __future__ import annotations

import inspect

import litserve as ls
import pytest
from fastapi.testclient import TestClient
from litserve.server import RegularRequestHandler
from litserve.utils import wrap_litserve_start

from serving.api import JOBS_PATH, TagiAPI, WorkerSettings
from serving.server import build_server
from serving.settings import ServerSettings


@pytest.fixture(scope="module")
def started(serve_checkpoint, tmp_path_factory):
    """One worker, batching off: LitServe then hands predict a single job, not a list."""
    tmp = tmp_path_factory.mktemp("internals")
    server = build_server(ServerSettings(checkpoint=serve_checkpoint, state_dir=tmp / "state", max_batch_size=1))
    with wrap_litserve_start(server) as running, TestClient(running.app) as client:
        yield running, client


def test_jobs_reach_the_worker_through_regular_request_handler(started):
    """serving.routes.JobQueue: a typed job object submitted from our route comes back as the
    worker's result object (also covers predict's single-job path, batching off)."""
    assert list(inspect.signature(RegularRequestHandler).parameters) == ["lit_api", "server"]
    assert list(inspect.signature(RegularRequestHandler.handle_request).parameters) == ["self", "request", "request_type"]
    _, client = started
    created = client.post("/v1/adapters", json={"instruction": "Reverse the list."})
    assert created.status_code == 200, created.text
    generated = client.post("/v1/generate", json={"adapter_id": created.json()["adapter_id"], "inputs": ["a, b"]})
    assert generated.status_code == 200 and len(generated.json()["outputs"]) == 1


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
    # build_server sets it; LitServe's uvicorn config must still read it.
    assert server.uvicorn_graceful_timeout == 5
    assert "self.uvicorn_graceful_timeout" in inspect.getsource(ls.LitServer._start_server)
    # serving.lifecycle.stop_manager: the manager process an orphaned HTTP server stops.
    assert server.transport_config.manager._process.pid > 0
    # serving.lifecycle.stop_workers: the worker processes.
    assert [p.is_alive() for p in server.inference_workers] == [True]
