"""API key, SIGTERM, SIGKILL, and a registry that outlives the server (restart on the same
state dir). SIGINT is what every other server fixture is stopped with, checked in teardown."""

from __future__ import annotations

import signal

import httpx2
import openai
import pytest

from serving.playground import PUBLIC_PATHS
from serving.schemas import BASE_MODEL_ID

KEY = "s3cret-test-key"
INSTRUCTION = "Sort the items of the list alphabetically."
INPUTS = ["apple, river, stone", "seven bright table"]
PROTECTED = [
    ("GET", "/info"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("GET", "/v1/adapters"),
    ("GET", "/v1/adapters/x"),
    ("GET", "/v1/adapters/x/peft"),
    ("DELETE", "/v1/adapters/x"),
    ("POST", "/v1/adapters"),
    ("POST", "/v1/generate"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, serve_checkpoint, state_dir, server_factory):
    proc = server_factory(
        tmp_path_factory.mktemp("keyed"), serve_checkpoint, env={"LIT_SERVER_API_KEY": KEY}, state_dir=state_dir
    )
    try:
        yield proc.wait_ready()
    finally:
        proc.stop(signal.SIGINT)
        proc.kill()


def test_every_endpoint_but_health_and_the_playground_page_needs_the_key(keyed_server):
    with httpx2.Client(base_url=keyed_server.url, timeout=60) as anonymous:
        assert anonymous.get("/health").status_code == 200
        # The playground's files hold no data; the page asks for the key and sends it with every call.
        for path in PUBLIC_PATHS:
            assert anonymous.get(path).status_code == 200, path
        for method, path in PROTECTED:
            response = anonymous.request(method, path, json={})
            assert response.status_code == 401, (method, path)
            assert "API key" in response.json()["error"]["message"]
        wrong = anonymous.get("/v1/models", headers={"X-API-Key": "wrong"})
        assert wrong.status_code == 401
    with httpx2.Client(base_url=keyed_server.url, timeout=60) as client:
        assert client.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert client.get("/info", headers={"X-API-Key": KEY}).json()["model"]["auth"] is True


def test_openai_client_sends_the_key_as_bearer(keyed_server):
    api = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key=KEY, max_retries=0)
    reply = api.chat.completions.create(
        model=BASE_MODEL_ID,
        max_tokens=5,
        messages=[{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": INPUTS[0]}],
    )
    assert isinstance(reply.choices[0].message.content, str)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_sigterm_leaves_no_process_and_adapters_survive_a_restart(
    keyed_server, tmp_path, serve_checkpoint, state_dir, server_factory
):
    with keyed_server.client() as client:
        adapter_id = client.post("/v1/adapters", json={"instruction": INSTRUCTION}).json()["adapter_id"]
        before = client.post("/v1/generate", json={"adapter_id": adapter_id, "inputs": INPUTS, "max_new_tokens": 8}).json()

    # SIGTERM to the main process only, as `kill PID`, systemd or docker stop send it.
    assert keyed_server.stop(signal.SIGTERM, to_group=False), "SIGTERM left processes behind"
    assert keyed_server.process.returncode == 0

    restarted = server_factory(tmp_path, serve_checkpoint, "--workers", "1", env={"LIT_SERVER_API_KEY": KEY}, state_dir=state_dir)
    try:
        restarted.wait_ready()
        with restarted.client() as client:
            assert client.get(f"/v1/adapters/{adapter_id}").json()["instruction"] == INSTRUCTION
            after = client.post("/v1/generate", json={"adapter_id": adapter_id, "inputs": INPUTS, "max_new_tokens": 8})
            assert after.status_code == 200 and after.json() == before
    finally:
        # The main process killed outright runs no cleanup: its children must notice and exit.
        stopped = restarted.stop(signal.SIGKILL, to_group=False)
        restarted.kill()
    assert stopped, "workers or HTTP servers outlived a SIGKILLed main process"
