"""Every endpoint of a real `tagi serve` (two workers) over HTTP on loopback."""

from __future__ import annotations

import gzip
import io
import tarfile
import threading
import time

import openai
import pytest
import torch
from peft import PeftModel
from transformers import T5ForConditionalGeneration

import hypernet
from hypernet.io import checkpoint_fingerprint
from hypernet.tiny import load_tokenizer
from serving.schemas import BASE_MODEL_ID, MAX_INPUTS, MAX_NEW_TOKENS
from tests.serving.promtext import parse, value

INSTRUCTIONS = [
    "Reverse the list.",
    "Sort the items of the list alphabetically.",
    "Count the words.",
    "Translate the list into numbers.",
    "Keep only the colours in the list.",
    "Write the list backwards, in capitals.",
    "Name the first item of the list.",
    "Repeat the last item twice.",
]
INPUTS = ["apple, river, stone", "green, 7, house, cloud seven"]


def generate(client, **body) -> dict:
    response = client.post("/v1/generate", json={"max_new_tokens": 10, **body})
    assert response.status_code == 200, response.text
    return response.json()


def metrics(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def per_worker(samples: dict, name: str) -> dict[str, float]:
    """A per-worker gauge by worker id."""
    return {dict(labels)["worker"]: v for (n, labels), v in samples.items() if n == name}


def wait_for_metric(client, predicate, timeout: float = 10.0) -> dict:
    """Worker samples reach the scrape within a flush interval; poll, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        samples = metrics(client)
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def test_health_and_info(client, serve_checkpoint):
    assert client.get("/health").status_code == 200
    info = client.get("/info").json()["model"]
    assert info["fingerprint"] == checkpoint_fingerprint(serve_checkpoint)
    assert info["max_input_tokens"] == 64 and info["max_batch_size"] == 8


def test_create_list_get_adapter(client, serve_checkpoint):
    created = client.post("/v1/adapters", json={"instruction": INSTRUCTIONS[0]})
    assert created.status_code == 200, created.text
    body = created.json()
    assert set(body) == {"adapter_id", "rank", "target_modules", "num_parameters", "cached", "generation_ms"}
    assert body["rank"] == 8 and body["target_modules"] == ["q", "k", "v", "o", "wi", "wo"]
    assert body["num_parameters"] > 0 and body["generation_ms"] >= 0
    again = client.post("/v1/adapters", json={"instruction": INSTRUCTIONS[0]}).json()
    assert again["adapter_id"] == body["adapter_id"], "the id is a content hash of checkpoint + instruction"

    listed = client.get("/v1/adapters").json()["adapters"]
    assert body["adapter_id"] in [a["adapter_id"] for a in listed]
    meta = client.get(f"/v1/adapters/{body['adapter_id']}").json()
    assert meta["instruction"] == INSTRUCTIONS[0] and meta["num_parameters"] == body["num_parameters"]


def test_generate_by_instruction_and_by_id_agree(client):
    by_instruction = generate(client, instruction=INSTRUCTIONS[1], inputs=INPUTS)
    by_id = generate(client, adapter_id=by_instruction["adapter_id"], inputs=INPUTS)
    assert by_id == by_instruction and len(by_id["outputs"]) == len(INPUTS)
    shorter = generate(client, adapter_id=by_instruction["adapter_id"], inputs=INPUTS, max_new_tokens=3)
    assert all(long.startswith(short) for short, long in zip(shorter["outputs"], by_id["outputs"], strict=True))


def test_concurrent_different_instructions_share_a_batch_and_match_serving_alone(client):
    alone = {text: generate(client, instruction=text, inputs=INPUTS)["outputs"] for text in INSTRUCTIONS}
    assert len({tuple(v) for v in alone.values()}) > 1, "adapters must make a difference for this test to mean anything"
    before = metrics(client)

    together: dict[str, list[str]] = {}
    barrier = threading.Barrier(len(INSTRUCTIONS))

    def request(text: str) -> None:
        barrier.wait(timeout=30)
        together[text] = generate(client, instruction=text, inputs=INPUTS)["outputs"]

    threads = [threading.Thread(target=request, args=(text,)) for text in INSTRUCTIONS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert together == alone

    def mixed_batches(samples: dict) -> float:
        """Forward passes with >= 2 distinct adapters since `before`."""
        count = value(samples, "tagi_batch_adapters_count") - value(before, "tagi_batch_adapters_count")
        single = value(samples, "tagi_batch_adapters_bucket", le="1.0") - value(before, "tagi_batch_adapters_bucket", le="1.0")
        return count - single

    assert mixed_batches(wait_for_metric(client, lambda s: mixed_batches(s) > 0)) > 0


def test_openai_client(server, client, serve_checkpoint):
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    instruction, text = INSTRUCTIONS[2], INPUTS[0]
    expected = generate(client, instruction=instruction, inputs=[text], max_new_tokens=12)

    reply = api.chat.completions.create(
        model=BASE_MODEL_ID,
        messages=[{"role": "system", "content": instruction}, {"role": "user", "content": text}],
        max_tokens=12,
    )
    assert reply.choices[0].message.content == expected["outputs"][0]
    assert reply.model == expected["adapter_id"]

    by_id = api.chat.completions.create(model=expected["adapter_id"], messages=[{"role": "user", "content": text}], max_tokens=12)
    assert by_id.choices[0].message.content == expected["outputs"][0]

    stream = api.chat.completions.create(
        model=expected["adapter_id"], messages=[{"role": "user", "content": text}], max_tokens=12, stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == expected["outputs"][0]

    base = api.chat.completions.create(model=BASE_MODEL_ID, messages=[{"role": "user", "content": text}], max_tokens=12)
    # /v1/generate has no base-model form: the reference is the library's own base-model output.
    assert base.choices[0].message.content == hypernet.load(serve_checkpoint).generate([text], None, max_new_tokens=12)[0]
    assert base.choices[0].message.content != expected["outputs"][0], "the adapter must change the output"
    assert base.model == BASE_MODEL_ID

    models = [m.id for m in api.models.list()]
    assert models[0] == BASE_MODEL_ID and expected["adapter_id"] in models

    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="no-such-adapter", messages=[{"role": "user", "content": text}])
    with pytest.raises(openai.UnprocessableEntityError, match="already is an instruction"):
        api.chat.completions.create(
            model=expected["adapter_id"], messages=[{"role": "system", "content": "x"}, {"role": "user", "content": text}]
        )


def test_peft_archive_round_trip(client, serve_checkpoint, tmp_path):
    adapter_id = client.post("/v1/adapters", json={"instruction": INSTRUCTIONS[3]}).json()["adapter_id"]
    expected = generate(client, adapter_id=adapter_id, inputs=INPUTS, fusion=False, max_new_tokens=8)["outputs"]

    archive = client.get(f"/v1/adapters/{adapter_id}/peft")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    files = {p.name for p in (tmp_path / adapter_id).iterdir()}
    assert files == {"adapter_config.json", "adapter_model.safetensors", "tagi.json"}
    assert client.get(f"/v1/adapters/{adapter_id}/peft").content == archive.content, "the same adapter downloads as the same file"
    assert str(serve_checkpoint).encode() not in gzip.decompress(archive.content), "the archive names no server path"

    base = T5ForConditionalGeneration.from_pretrained(serve_checkpoint / "base")
    peft = PeftModel.from_pretrained(base, tmp_path / adapter_id).eval()
    tokenizer = load_tokenizer(serve_checkpoint / "base")
    batch = tokenizer(INPUTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        tokens = peft.generate(**batch, max_new_tokens=8, do_sample=False, num_beams=1)
    assert tokenizer.batch_decode(tokens, skip_special_tokens=True) == expected


def test_delete_is_seen_by_every_worker(client):
    instruction = "Keep only the colours, then reverse the list."  # no other test used it: in no cache yet
    before = per_worker(metrics(client), "tagi_adapter_cache_entries")
    adapter_id = client.post("/v1/adapters", json={"instruction": instruction}).json()["adapter_id"]

    def holders() -> set[str]:
        """Workers whose cache grew since `before`: they generated (and hold) this adapter."""
        now = per_worker(metrics(client), "tagi_adapter_cache_entries")
        return {worker for worker, entries in now.items() if entries > before.get(worker, 0)}

    for _ in range(40):  # whichever worker takes a job from the shared queue serves it
        if len(holders()) == 2:
            break
        generate(client, adapter_id=adapter_id, inputs=INPUTS[:1])
    assert len(holders()) == 2, "both workers must hold the adapter before the delete, or the test shows nothing"
    assert client.get(f"/v1/adapters/{adapter_id}/peft").status_code == 200

    deleted = client.delete(f"/v1/adapters/{adapter_id}")
    assert deleted.status_code == 200 and deleted.json() == {"adapter_id": adapter_id, "deleted": True}
    for _ in range(8):  # sequential requests reach both workers (shown above); each refuses the id
        gone = client.post("/v1/generate", json={"adapter_id": adapter_id, "inputs": INPUTS[:1]})
        assert gone.status_code == 404 and "unknown adapter id" in gone.json()["error"]["message"]
    assert client.get(f"/v1/adapters/{adapter_id}").status_code == 404
    assert client.get(f"/v1/adapters/{adapter_id}/peft").status_code == 404
    assert client.delete(f"/v1/adapters/{adapter_id}").status_code == 404
    assert adapter_id not in [m["id"] for m in client.get("/v1/models").json()["data"]]

    recreated = client.post("/v1/adapters", json={"instruction": instruction}).json()
    assert recreated["adapter_id"] == adapter_id
    assert client.get(f"/v1/adapters/{adapter_id}").status_code == 200


LONG = "apple river stone " * 60  # well over the checkpoint's 64 input / 128 instruction tokens
BAD_REQUESTS = [
    ("POST", "/v1/generate", b"{not json", 400),
    ("POST", "/v1/generate", b"[1, 2]", 422),
    ("POST", "/v1/generate", {"inputs": ["x"]}, 422),
    ("POST", "/v1/generate", {"instruction": "a", "adapter_id": "b", "inputs": ["x"]}, 422),
    ("POST", "/v1/generate", {"instruction": "  ", "inputs": ["x"]}, 422),
    ("POST", "/v1/generate", {"instruction": "", "inputs": ["x"]}, 422),
    ("POST", "/v1/generate", {"instruction": 5, "inputs": ["x"]}, 422),
    ("POST", "/v1/generate", {"instruction": "a", "inputs": []}, 422),
    ("POST", "/v1/generate", {"instruction": "a", "inputs": "x"}, 422),
    ("POST", "/v1/generate", {"instruction": "a", "inputs": [1]}, 422),
    ("POST", "/v1/generate", {"instruction": "a", "inputs": ["x"] * (MAX_INPUTS + 1)}, 422),
    ("POST", "/v1/generate", {"instruction": "a", "inputs": ["x"], "max_new_tokens": 0}, 422),
    ("POST", "/v1/generate", {"instruction": "a", "inputs": ["x"], "max_new_tokens": MAX_NEW_TOKENS + 1}, 422),
    ("POST", "/v1/generate", {"instruction": "a", "inputs": ["x"], "max_new_tokens": "5"}, 422),
    ("POST", "/v1/generate", {"instruction": "a", "inputs": ["x"], "fusion": "yes"}, 422),
    ("POST", "/v1/generate", {"instruction": "a", "inputs": ["x"], "temperature": 3}, 422),
    ("POST", "/v1/generate", {"instruction": LONG, "inputs": ["x"]}, 413),
    ("POST", "/v1/generate", {"instruction": "a", "inputs": ["x", LONG]}, 413),
    ("POST", "/v1/generate", {"adapter_id": "0" * 32, "inputs": ["x"]}, 404),
    ("POST", "/v1/generate", b"x" * (5 * 2**20), 413),
    ("POST", "/v1/adapters", {}, 422),
    ("POST", "/v1/adapters", {"instruction": ""}, 422),
    ("POST", "/v1/adapters", {"instruction": "   "}, 422),
    ("POST", "/v1/adapters", {"instruction": ["a"]}, 422),
    ("POST", "/v1/adapters", {"instruction": LONG}, 413),
    ("GET", "/v1/adapters/nope", None, 404),
    ("GET", "/v1/adapters/nope/peft", None, 404),
    ("DELETE", "/v1/adapters/nope", None, 404),
    ("POST", "/v1/chat/completions", {"model": BASE_MODEL_ID, "messages": []}, 422),
    *(
        (
            "POST",
            "/v1/chat/completions",
            {"model": BASE_MODEL_ID, "messages": [{"role": "system", "content": blank}, {"role": "user", "content": "a"}]},
            422,
        )
        for blank in ("", "   ")
    ),
    ("POST", "/v1/chat/completions", {"model": BASE_MODEL_ID, "messages": [{"role": "system", "content": "a"}]}, 422),
    (
        "POST",
        "/v1/chat/completions",
        {
            "model": BASE_MODEL_ID,
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
            ],
        },
        422,
    ),
    ("POST", "/v1/chat/completions", {"model": BASE_MODEL_ID, "n": 9, "messages": [{"role": "user", "content": "a"}]}, 422),
    (
        "POST",
        "/v1/chat/completions",
        {"model": BASE_MODEL_ID, "max_tokens": 0, "messages": [{"role": "user", "content": "a"}]},
        422,
    ),
    ("POST", "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "a"}]}, 404),
    ("GET", "/v1/nowhere", None, 404),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"), BAD_REQUESTS, ids=[f"{m} {p} {s} #{i}" for i, (m, p, _, s) in enumerate(BAD_REQUESTS)]
)
def test_bad_input_is_a_4xx_with_a_json_message(client, method, path, body, status):
    kwargs = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else {}
    if isinstance(body, dict):
        kwargs = {"json": body}
    response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    assert isinstance(message, str) and message


def test_bad_requests_in_a_batch_fail_alone_and_workers_survive(client):
    """A too-long input batched with good requests fails only its own request."""
    good = generate(client, instruction=INSTRUCTIONS[5], inputs=INPUTS)
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def request(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            body = {"instruction": INSTRUCTIONS[5], "inputs": [LONG] if i % 2 else INPUTS, "max_new_tokens": 10}
            results[i] = client.post("/v1/generate", json=body)
        except BaseException as err:  # noqa: BLE001 - reported by the test thread below
            errors.append(err)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and sorted(results) == list(range(6))
    for i, response in results.items():
        assert response.status_code == (413 if i % 2 else 200)
        if i % 2 == 0:
            assert response.json() == good
    assert client.get("/health").status_code == 200


def test_metrics_cover_requests_errors_latency_batches_and_cache(client):
    client.post("/v1/generate", json={"inputs": ["x"]})  # one 422 at least
    before = metrics(client)
    for _ in range(3):  # two workers: one of them serves this instruction twice, the second time from its cache
        generate(client, instruction="Name the first two items.", inputs=INPUTS)  # in no cache yet
    samples = metrics(client)
    assert value(samples, "tagi_adapter_cache_hits_total") - value(before, "tagi_adapter_cache_hits_total") >= 1
    assert value(samples, "tagi_adapter_cache_misses_total") - value(before, "tagi_adapter_cache_misses_total") >= 1
    assert value(samples, "tagi_http_requests_total", endpoint="/v1/generate", method="POST", code="200") > 0
    assert value(samples, "tagi_http_errors_total", endpoint="/v1/generate", method="POST", code="422") >= 1
    assert value(samples, "tagi_http_request_duration_seconds_count", endpoint="/v1/generate") > 0
    assert value(samples, "tagi_http_request_duration_seconds_bucket", endpoint="/v1/generate", le="+Inf") == value(
        samples, "tagi_http_request_duration_seconds_count", endpoint="/v1/generate"
    )
    assert value(samples, "tagi_batch_requests_count") > 0 and value(samples, "tagi_batch_rows_sum") > 0
    assert value(samples, "tagi_adapter_cache_hits_total") > 0
    assert value(samples, "tagi_adapter_cache_bytes") > 0 and value(samples, "tagi_adapter_cache_entries") > 0
    assert ("tagi_adapter_cache_evictions_total", frozenset()) in samples
