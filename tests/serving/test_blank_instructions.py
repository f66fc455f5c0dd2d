"""An empty or blank instruction is refused on every endpoint that takes one, on the shipped
checkpoint, whose template would turn "" into "Definition: " (not empty) if the text reached it.
The HTTP schemas refuse it first; the worker refuses it too if a job ever carried one."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from litserve.utils import wrap_litserve_start

import hypernet
from hypernet.files import DEFAULT_CHECKPOINT
from serving.jobs import ExportRequest
from serving.registry import Registry
from serving.schemas import BASE_MODEL_ID, AdapterCreateRequest, GenerateRequest
from serving.server import build_server
from serving.service import AdapterService
from serving.settings import ServerSettings
from tests.serving.promtext import parse, value

BLANKS = ("", "   ")
REQUESTS = [
    *(("/v1/adapters", {"instruction": blank}) for blank in BLANKS),
    *(("/v1/generate", {"instruction": blank, "inputs": ["1, 2"]}) for blank in BLANKS),
    *(
        (
            "/v1/chat/completions",
            {"model": BASE_MODEL_ID, "messages": [{"role": "system", "content": blank}, {"role": "user", "content": "1, 2"}]},
        )
        for blank in BLANKS
    ),
    *(
        (
            "/v1/chat/completions",
            {
                "model": BASE_MODEL_ID,
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": blank}]},
                    {"role": "user", "content": "1, 2"},
                ],
            },
        )
        for blank in BLANKS
    ),
]


def test_the_shipped_template_would_hide_an_empty_instruction():
    assert hypernet.load().config.format_instruction("") == "Definition: "


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("blank") / "state"
    server = build_server(ServerSettings(checkpoint=DEFAULT_CHECKPOINT, state_dir=state_dir))
    with wrap_litserve_start(server) as started, TestClient(started.app) as test_client:
        yield test_client


@pytest.mark.parametrize(("path", "body"), REQUESTS, ids=[f"{p} #{i}" for i, (p, _) in enumerate(REQUESTS)])
def test_every_endpoint_refuses_a_blank_instruction(client, path, body):
    batches = lambda: value(parse(client.get("/metrics").text), "tagi_batch_requests_count")  # noqa: E731
    before = batches()
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert "empty" in response.json()["error"]["message"]
    assert batches() == before, "refused by the HTTP process: it never reached a worker"
    assert client.get("/v1/adapters").json()["adapters"] == [], "nothing was created"


@pytest.mark.parametrize("blank", BLANKS)
def test_the_worker_refuses_one_that_bypassed_the_schemas(tmp_path, blank):
    model = hypernet.load()
    service = AdapterService(model, Registry(tmp_path, model.fingerprint), tmp_path, cache_bytes=2**26)
    jobs = [
        AdapterCreateRequest.model_construct(instruction=blank),
        GenerateRequest.model_construct(instruction=blank, adapter_id=None, inputs=["1, 2"], max_new_tokens=4, fusion=None),
        GenerateRequest(inputs=["1, 2"], max_new_tokens=4),
        ExportRequest(adapter_id="0" * 32),
    ]
    results = service.run(jobs)
    assert [r.status for r in results] == [422, 422, 200, 404]
    assert results[0].body["error"]["message"] == "instruction is empty"
    assert service.registry.list() == []
