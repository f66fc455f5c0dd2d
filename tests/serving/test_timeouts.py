"""504: a request whose answer does not come within the server's timeout, whether a worker is
busy with it or it waits in the queue behind a slow one; the server serves again afterwards
and the worker drops the job nobody waits for any more."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient
from litserve.utils import wrap_litserve_start

from serving.schemas import MAX_INPUTS, MAX_NEW_TOKENS
from serving.server import build_server
from serving.settings import ServerSettings
from tests.serving.promtext import parse, value

TIMEOUT = 0.2
SLOW = {
    "instruction": "Reverse the list.",
    "inputs": [f"apple river {i} stone green house" for i in range(MAX_INPUTS)],
    "max_new_tokens": MAX_NEW_TOKENS,
}
"""32 rows of 256 tokens on the micro checkpoint (its random adapters never stop early): 0.5 to 1 s
on an idle machine, several times TIMEOUT."""
SMALL = {"instruction": "Reverse the list.", "inputs": ["a, b"], "max_new_tokens": 4}


@pytest.fixture(scope="module")
def client(serve_checkpoint, tmp_path_factory):
    settings = ServerSettings(
        checkpoint=serve_checkpoint, state_dir=tmp_path_factory.mktemp("timeouts") / "state", max_batch_size=1, timeout=TIMEOUT
    )
    with wrap_litserve_start(build_server(settings)) as started, TestClient(started.app) as test_client:
        deadline = time.monotonic() + 120
        while test_client.get("/health").status_code != 200:  # a job sent before the worker is up would expire
            assert time.monotonic() < deadline, "the worker never got ready"
            time.sleep(0.2)
        yield test_client


def batches(client) -> float:
    """Decode passes finished (a batch's size is counted when it starts, its forward time when it ends)."""
    return value(parse(client.get("/metrics").text), "tagi_forward_seconds_count")


def test_unanswered_and_queued_requests_get_a_504_and_the_server_recovers(client):
    before = batches(client)
    queued: dict[str, object] = {}

    def post_behind_the_slow_one() -> None:
        # Sent while the slow job runs, so it waits in the queue for longer than TIMEOUT
        # however fast the machine finishes the slow job afterwards.
        time.sleep(TIMEOUT / 4)
        queued["response"] = client.post("/v1/generate", json=SMALL)

    behind = threading.Thread(target=post_behind_the_slow_one)
    start = time.monotonic()
    behind.start()
    slow = client.post("/v1/generate", json=SLOW)
    behind.join(timeout=60)
    assert slow.status_code == 504, slow.text
    assert slow.json()["error"] == {
        "message": f"no inference worker answered within {TIMEOUT:g} s",
        "type": "timeout",
        "code": 504,
    }
    assert time.monotonic() - start < TIMEOUT + 2, "answered at the deadline, not when the worker finished"

    response = queued["response"]
    assert response.status_code == 504 and response.json()["error"]["code"] == 504

    deadline = time.monotonic() + 60
    while batches(client) - before < 1 and time.monotonic() < deadline:  # the slow job finishes
        time.sleep(0.1)
    time.sleep(1.0)  # the worker takes the queued job, sees it expired, and drops it
    assert batches(client) - before == 1, "the slow job ran; the expired one never reached the model"

    for _ in range(5):  # the server answers again (a retry only if this machine is too busy for TIMEOUT)
        answered = client.post("/v1/generate", json=SMALL)
        if answered.status_code == 200:
            break
    assert answered.status_code == 200, answered.text
