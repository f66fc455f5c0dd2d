"""The server in-process with LitServe's test helper: routes, validation and the adapter
cache's byte bound, without a real socket (one spawned inference worker)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from litserve.utils import wrap_litserve_start

from hypernet.rubric import MAX_RUBRIC_CHARS, with_rubric
from serving.schemas import BASE_MODEL_ID
from serving.server import build_server
from serving.settings import ServerSettings
from tests.serving.promtext import parse, value

INSTRUCTIONS = ["Reverse the list.", "Sort the items of the list alphabetically.", "Count the words."]


@pytest.fixture(scope="module")
def client(serve_checkpoint, tmp_path_factory):
    from hypernet.io import load_checkpoint

    one_adapter = load_checkpoint(serve_checkpoint).adapter(INSTRUCTIONS[0]).nbytes
    tmp = tmp_path_factory.mktemp("inprocess")
    settings = ServerSettings(
        checkpoint=serve_checkpoint, state_dir=tmp / "state", max_batch_size=4, adapter_cache_mb=1.5 * one_adapter / 2**20
    )
    server = build_server(settings)
    with wrap_litserve_start(server) as started, TestClient(started.app) as test_client:
        yield test_client


def scrape(client, predicate, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        samples = parse(client.get("/metrics").text)
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_cache_holds_what_fits_and_rebuilds_evicted_adapters(client):
    before = parse(client.get("/metrics").text)
    delta = lambda samples, name: value(samples, name) - value(before, name)  # noqa: E731
    first = client.post("/v1/adapters", json={"instruction": INSTRUCTIONS[0]}).json()
    assert first["cached"] is False
    assert client.post("/v1/adapters", json={"instruction": INSTRUCTIONS[0]}).json()["cached"] is True
    outputs = client.post("/v1/generate", json={"adapter_id": first["adapter_id"], "inputs": ["a, b"]}).json()
    for text in INSTRUCTIONS[1:]:
        assert client.post("/v1/adapters", json={"instruction": text}).status_code == 200
    again = client.post("/v1/adapters", json={"instruction": INSTRUCTIONS[0]}).json()
    assert again["cached"] is False and again["adapter_id"] == first["adapter_id"], "evicted, then rebuilt on demand"
    assert client.post("/v1/generate", json={"adapter_id": first["adapter_id"], "inputs": ["a, b"]}).json() == outputs

    samples = scrape(client, lambda s: delta(s, "tagi_adapter_cache_evictions_total") >= 3)
    assert delta(samples, "tagi_adapter_cache_evictions_total") >= 3
    assert delta(samples, "tagi_adapter_cache_entries") == 1


def test_validation_errors_never_reach_the_worker(client):
    response = client.post("/v1/generate", content=b"{oops", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["message"].startswith("invalid JSON body")
    response = client.post("/v1/generate", data={"instruction": "x"})  # a form, not JSON
    assert response.status_code == 422 and "Content-Type: application/json" in response.json()["error"]["message"]
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/v1/generate", "/v1/adapters", "/v1/chat/completions"}
    assert "/internal/jobs" not in client.get("/openapi.json").json()["paths"], "the raw job route is not exposed"


def test_a_rubric_makes_another_adapter_on_every_instruction_endpoint(client):
    """The generator reads instruction + rubric (hypernet.rubric.with_rubric): another adapter, registered
    under that text; a rubric without an instruction, blank or too long is refused before the worker."""
    rubric = "The answer has exactly the input's items."
    plain = client.post("/v1/adapters", json={"instruction": INSTRUCTIONS[0]}).json()["adapter_id"]
    ruled = client.post("/v1/adapters", json={"instruction": INSTRUCTIONS[0], "rubric": rubric}).json()["adapter_id"]
    assert ruled != plain
    assert client.get(f"/v1/adapters/{ruled}").json()["instruction"] == with_rubric(INSTRUCTIONS[0], rubric)
    listed = client.post("/v1/adapters", json={"instructions": INSTRUCTIONS[:1], "rubric": rubric}).json()
    assert [a["adapter_id"] for a in listed["adapters"]] == [ruled]
    body = {"instruction": INSTRUCTIONS[0], "rubric": rubric, "inputs": ["a, b"], "max_new_tokens": 2}
    assert client.post("/v1/generate", json=body).json()["adapter_id"] == ruled
    chat = {"model": BASE_MODEL_ID, "max_tokens": 2, "rubric": rubric}
    system = [{"role": "system", "content": INSTRUCTIONS[0]}, {"role": "user", "content": "a, b"}]
    assert client.post("/v1/chat/completions", json={**chat, "messages": system}).json()["model"] == ruled
    refused = [
        ("/v1/generate", {"adapter_id": ruled, "rubric": rubric, "inputs": ["a"]}, "rubric goes with an instruction"),
        ("/v1/generate", {**body, "rubric": "  "}, "rubric: must not be empty"),
        ("/v1/adapters", {"instruction": "x", "rubric": "r" * (MAX_RUBRIC_CHARS + 1)}, f"at most {MAX_RUBRIC_CHARS}"),
        ("/v1/chat/completions", {**chat, "messages": system[1:]}, "rubric goes with an instruction"),
    ]
    for path, request, fragment in refused:
        response = client.post(path, json=request)
        assert response.status_code == 422 and fragment in response.json()["error"]["message"], response.json()
