"""Validation at the edge: every string a client sends is valid Unicode and bounded, before it
reaches a worker; error bodies stay small and say nothing of the server's insides (issue 11,
items 1 and 8)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from serving.errors import MAX_ECHO_CHARS
from serving.registry import REGISTRY_FILE
from serving.schemas import BASE_MODEL_ID, MAX_TEXT_CHARS, NON_BLANK_PATTERN
from tests.serving.promtext import parse, value

SURROGATE = "\ud800"
GOOD_ID = "0" * 32


def test_the_documented_non_blank_pattern_is_exactly_what_strip_checks():
    """The OpenAPI document says `pattern`, the server checks `text.strip()`: one set of characters."""
    pattern = re.compile(NON_BLANK_PATTERN)
    disagree = [c for c in map(chr, range(0x110000)) if (pattern.search(c) is None) != c.isspace()]
    assert disagree == []


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("edge") / "state"


@pytest.fixture(scope="module")
def server(server_factory, state_dir, serve_checkpoint):
    args = ("--workers", "1", "--batch-timeout", "0.1")
    proc = server_factory(state_dir.parent, serve_checkpoint, *args, state_dir=state_dir)
    try:
        yield proc.wait_ready()
    finally:
        proc.close()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def post_raw(client, path: str, body: dict):
    """JSON with \\uXXXX escapes: how a lone surrogate reaches a server (httpx cannot encode one)."""
    return client.post(path, content=json.dumps(body, ensure_ascii=True), headers={"Content-Type": "application/json"})


def chat(content: str = "1, 2", system: str | None = None, model: str = BASE_MODEL_ID, **extra) -> dict:
    messages = [{"role": "system", "content": system}] if system is not None else []
    return {"model": model, "messages": [*messages, {"role": "user", "content": content}], **extra}


BAD_TEXT = [
    ("/v1/adapters", {"instruction": f"Sort {SURROGATE} it"}, "instruction"),
    ("/v1/adapters", {"instructions": ["Sort.", f"x{SURROGATE}"]}, "instructions.1"),
    ("/v1/generate", {"instruction": f"Sort {SURROGATE} it", "inputs": ["1"]}, "instruction"),
    ("/v1/generate", {"instruction": "Sort.", "inputs": ["1", f"2{SURROGATE}"]}, "inputs.1"),
    ("/v1/generate", {"adapter_id": f"{SURROGATE}{'0' * 31}", "inputs": ["1"]}, "adapter_id"),
    ("/v1/generate", {"instruction": "Sort.", "inputs": ["1"], "stop": [f"x{SURROGATE}"]}, "stop"),
    ("/v1/chat/completions", chat(f"1 {SURROGATE}"), "messages.0.content"),
    ("/v1/chat/completions", chat(system=f"Sort {SURROGATE}"), "messages.0.content"),
    ("/v1/chat/completions", chat(model=f"m{SURROGATE}"), "model"),
    (
        "/v1/chat/completions",
        {**chat(), "messages": [{"role": "user", "content": [{"type": "text", "text": SURROGATE}]}]},
        "text",
    ),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD_TEXT, ids=[f"{p} {f} #{i}" for i, (p, _, f) in enumerate(BAD_TEXT)])
def test_a_lone_surrogate_anywhere_is_a_422_naming_the_field(client, path, body, field):
    response = post_raw(client, path, body)
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert field in message and "Unicode" in message, message


def test_a_surrogate_in_a_field_name_or_path_is_a_clean_4xx(client):
    response = post_raw(client, "/v1/generate", {"instruction": "Sort.", "inputs": ["1"], f"x{SURROGATE}": 1})
    assert response.status_code == 422 and response.json()["error"]["message"]
    assert client.get("/v1/adapters/%ED%A0%80").status_code == 404


def test_one_bad_request_never_fails_its_batch_mates(client):
    """Issue 11, item 1: 1 surrogate request among 15 good ones gave 500s to good ones."""
    before = value(parse(client.get("/metrics").text), "tagi_batch_requests_count")
    results: dict[int, int] = {}
    barrier = threading.Barrier(16)

    def request(i: int) -> None:
        body = {"instruction": f"Reverse the list{SURROGATE if i == 7 else ''}.", "inputs": [f"{i}, 2"], "max_new_tokens": 4}
        barrier.wait(timeout=30)
        results[i] = post_raw(client, "/v1/generate", body).status_code

    threads = [threading.Thread(target=request, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == {i: 422 if i == 7 else 200 for i in range(16)}
    after = value(parse(client.get("/metrics").text), "tagi_batch_requests_count")
    assert after > before, "the good requests were served"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/adapters", {"instruction": "x" * (MAX_TEXT_CHARS + 1)}),
        ("/v1/generate", {"instruction": "Sort.", "inputs": ["x" * (MAX_TEXT_CHARS + 1)]}),
        ("/v1/chat/completions", chat("x" * (MAX_TEXT_CHARS + 1))),
        ("/v1/generate", {"adapter_id": "a" * 33, "inputs": ["1"]}),
        ("/v1/generate", {"adapter_id": "A" * 32, "inputs": ["1"]}),
    ],
    ids=["instruction", "input", "chat content", "long id", "upper-case id"],
)
def test_texts_and_ids_are_bounded(client, path, body):
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert len(response.content) < 500, "the error does not repeat the text"


def test_errors_echo_at_most_a_bounded_part_of_an_id(client):
    """Issue 11, item 8: a 1 MB id gave a 1 MB error."""
    long_id = "f" * 8000  # a request line uvicorn still accepts
    for response in (
        client.get(f"/v1/adapters/{long_id}"),
        client.get(f"/v1/adapters/{long_id}/peft"),
        client.delete(f"/v1/adapters/{long_id}"),
    ):
        assert response.status_code == 404
        message = response.json()["error"]["message"]
        assert "f" * MAX_ECHO_CHARS in message and "f" * (MAX_ECHO_CHARS + 1) not in message
    huge = client.post("/v1/chat/completions", json=chat(model="m" * 2**20))
    assert huge.status_code == 422 and len(huge.content) < 500
    unknown_field = client.post("/v1/generate", json={"instruction": "Sort.", "inputs": ["1"], "k" * 2**20: 1})
    assert unknown_field.status_code == 422 and len(unknown_field.content) < 500
    missing = client.post("/v1/generate", json={"adapter_id": GOOD_ID, "inputs": ["1"]})
    assert missing.status_code == 404 and GOOD_ID in missing.json()["error"]["message"]


def test_info_shows_no_server_paths(server, state_dir, serve_checkpoint):
    """Issue 11, item 8: /info gave the absolute paths of the checkpoint and the state directory."""
    with server.client() as c:
        info = c.get("/info").json()
    text = json.dumps(info)
    for path in (Path(serve_checkpoint).resolve(), state_dir.resolve(), Path.home()):
        assert str(path) not in text
    assert info["model"]["checkpoint"] == Path(serve_checkpoint).name
    assert not [v for v in _strings(info) if v.startswith("/") and not v.startswith("/internal/")], "no absolute paths"


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for key, v in node.items() for s in (key, *_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_a_bug_in_a_route_is_a_json_500_without_internals(client, state_dir):
    """Last in this module: it breaks the server's registry. A route that fails for a reason of
    the server's own answers JSON with an error id, never the exception's text or a path."""
    for path in state_dir.glob(f"{REGISTRY_FILE}*"):
        path.unlink()
    (state_dir / REGISTRY_FILE).write_bytes(b"not a database " * 100)
    response = client.get("/v1/adapters")
    assert response.status_code == 500
    message = response.json()["error"]["message"]
    assert message.startswith("internal error (error id ")
    assert "database" not in response.text and str(state_dir) not in response.text
