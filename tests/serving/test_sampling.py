"""Sampling and the OpenAI fields over HTTP: temperature, top_p, seed, stop, n, usage,
finish_reason, the per-request budget, and what chat refuses instead of ignoring."""

from __future__ import annotations

import threading

import openai
import pytest

from serving.schemas import BASE_MODEL_ID, MAX_INPUTS, MAX_NEW_TOKENS, MAX_REQUEST_TOKENS

INSTRUCTION = "Sort the items of the list alphabetically."
TEXT = "apple, river, stone, cloud"


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def api(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def generate(client, **body) -> dict:
    response = client.post("/v1/generate", json={"instruction": INSTRUCTION, "inputs": [TEXT], "max_new_tokens": 24, **body})
    assert response.status_code == 200, response.text
    return response.json()


def chat(api, **kwargs):
    messages = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": TEXT}]
    return api.chat.completions.create(model=BASE_MODEL_ID, messages=messages, **{"max_tokens": 24, **kwargs})


def test_greedy_is_the_default_and_temperature_0_is_greedy(client):
    greedy = generate(client)
    assert generate(client, temperature=0, seed=1, top_p=0.5) == greedy
    assert set(greedy) == {"adapter_id", "outputs", "finish_reasons", "usage"}


def test_the_same_seed_gives_the_same_output_and_other_seeds_others(client, api):
    sampled = [generate(client, temperature=1.0, seed=seed)["outputs"][0] for seed in (1, 1, 2, 3)]
    assert sampled[0] == sampled[1]
    assert len(set(sampled[1:])) == 3, "different seeds at temperature 1 give different outputs"
    assert generate(client)["outputs"][0] not in sampled
    replies = [chat(api, temperature=1, seed=seed).choices[0].message.content for seed in (7, 7, 8)]
    assert replies[0] == replies[1] != replies[2]
    unseeded = {generate(client, temperature=1.0)["outputs"][0] for _ in range(3)}
    assert len(unseeded) == 3, "without a seed, each request draws its own"


def test_a_seed_gives_the_same_output_whatever_shares_its_batch(client):
    """Concurrent requests land in shared batches (the server gathers for 0.1 s); a seeded row
    reads only its own random stream."""
    body = {"temperature": 1.2, "top_p": 0.9, "seed": 42}
    alone = generate(client, **body)
    results: dict[int, dict] = {}
    barrier = threading.Barrier(6)

    def request(i: int) -> None:
        barrier.wait(timeout=30)
        results[i] = generate(client, **body) if i % 2 == 0 else generate(client, temperature=1.0, seed=i, inputs=[TEXT, "x, y"])

    threads = [threading.Thread(target=request, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results[i] for i in (0, 2, 4)] == [alone] * 3


def test_stop_strings_cut_the_output_and_finish_with_stop(client, api):
    full = generate(client, max_new_tokens=40)
    text = full["outputs"][0]
    assert full["finish_reasons"] == ["length"], "the micro checkpoint never ends a text by itself"
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = generate(client, max_new_tokens=40, stop=[stop, "never in the text"])
    assert cut["outputs"] == [text[: text.index(stop)]] and cut["finish_reasons"] == ["stop"]
    assert cut["usage"]["completion_tokens"] < full["usage"]["completion_tokens"]
    reply = chat(api, max_tokens=40, stop=stop)
    assert reply.choices[0].message.content == cut["outputs"][0] and reply.choices[0].finish_reason == "stop"


def test_max_tokens_finishes_with_length_and_usage_counts_tokens(client, api):
    reply = chat(api, max_tokens=9)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 9 and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    two = generate(client, inputs=[TEXT, TEXT + ", sky"], max_new_tokens=9)
    one = generate(client, max_new_tokens=9)
    assert two["usage"]["completion_tokens"] == 18 and two["usage"]["prompt_tokens"] > one["usage"]["prompt_tokens"]
    assert one["usage"] == reply.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})


def test_n_gives_several_choices_per_input(client, api):
    reply = chat(api, n=3, temperature=1, seed=11)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    assert len(set(texts)) == 3
    assert texts[0] == chat(api, temperature=1, seed=11).choices[0].message.content, "choice 0 samples with the seed itself"
    alone = [chat(api, temperature=1, seed=11 + c) for c in range(3)]
    assert texts == [a.choices[0].message.content for a in alone], "choice c samples with seed + c"
    assert reply.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    assert all(a.usage.completion_tokens <= 24 for a in alone)
    assert reply.usage.prompt_tokens == chat(api).usage.prompt_tokens, "the prompt is counted once"

    body = generate(client, inputs=[TEXT, "x, y"], n=2, temperature=1.0, seed=11)
    assert [len(per_input) for per_input in body["outputs"]] == [2, 2]
    assert body["finish_reasons"][0] == [c.finish_reason for c in reply.choices[:2]]
    assert all(reason in ("stop", "length") for reason in body["finish_reasons"][1])
    assert body["outputs"][0][0] == texts[0], "the same row settings give the same text on both endpoints"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "1"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": 1.5}, "seed"),
        ({"stop": ""}, "stop"),
        ({"stop": ["a", ""]}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"inputs": ["x"] * MAX_INPUTS, "max_new_tokens": MAX_NEW_TOKENS, "n": 2}, f"budget of {MAX_REQUEST_TOKENS}"),
    ],
)
def test_bad_sampling_fields_are_a_422_with_a_message(client, body, fragment):
    response = client.post("/v1/generate", json={"instruction": INSTRUCTION, "inputs": [TEXT], **body})
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]["message"]


def test_chat_refuses_what_it_cannot_honour_and_ignores_the_rest(client):
    base = {"model": BASE_MODEL_ID, "messages": [{"role": "user", "content": TEXT}], "max_tokens": 4}
    for field, value in [("logprobs", True), ("tools", [{"type": "function"}]), ("presence_penalty", 0.5)]:
        response = client.post("/v1/chat/completions", json={**base, field: value})
        assert response.status_code == 422 and field in response.json()["error"]["message"], response.text
    harmless = {"user": "someone", "logprobs": False, "presence_penalty": 0, "metadata": {"a": "b"}, "temperature": None}
    response = client.post("/v1/chat/completions", json={**base, **harmless})
    assert response.status_code == 200, response.text
    assert (
        response.json()["choices"][0]["message"]["content"]
        == client.post("/v1/chat/completions", json=base).json()["choices"][0]["message"]["content"]
    )
