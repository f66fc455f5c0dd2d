"""Streaming: AdapterService.stream answers each job when its own rows are done, and the HTTP
routes send text as it is decoded (server-sent events on /v1/generate and chat)."""

from __future__ import annotations

import json
import time

import openai
import pytest
import torch

from serving.jobs import JobEvent, JobResult
from serving.registry import Registry
from serving.schemas import BASE_MODEL_ID, AdapterCreateRequest, GenerateRequest
from serving.service import AdapterService

INSTRUCTION = "Reverse the list."
INPUTS = ["apple, river, stone", "green, 7, house, cloud seven"]


@pytest.fixture()
def service(model, tmp_path):
    """One torch thread while it decodes: these tests decode hundreds of steps of a few rows,
    where a second thread only adds synchronisation (on a busy machine, 10x the time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield AdapterService(model, Registry(tmp_path / "state", model.fingerprint), tmp_path / "state", cache_bytes=64 * 2**20)
    torch.set_num_threads(threads)


def gen(**kwargs) -> GenerateRequest:
    return GenerateRequest(**{"instruction": INSTRUCTION, "inputs": INPUTS, "max_new_tokens": 8, **kwargs})


def collect(service, jobs) -> tuple[list[list[JobEvent]], list[JobResult], list[float], list[int]]:
    """Per job: its events, its result, when the result came (s) and at which step."""
    events: list[list[JobEvent]] = [[] for _ in jobs]
    results: list[JobResult | None] = [None] * len(jobs)
    seconds, steps = [0.0] * len(jobs), [0] * len(jobs)
    start = time.perf_counter()
    for step, items in enumerate(service.stream(jobs)):
        assert len(items) == len(jobs) and any(item is not None for item in items), "aligned, and no empty steps"
        for i, item in enumerate(items):
            if isinstance(item, JobEvent):
                assert results[i] is None, "no event after the job's result"
                events[i].append(item)
            elif isinstance(item, JobResult):
                assert results[i] is None, "exactly one result per job"
                results[i], seconds[i], steps[i] = item, time.perf_counter() - start, step
    assert all(result is not None for result in results)
    return events, results, seconds, steps


def streamed_text(events: list[JobEvent], result: JobResult) -> list[str]:
    """What a client has after the events, completed by the result (the route sends that tail)."""
    texts = ["".join(parts) for parts in zip(*(event.deltas for event in events), strict=True)] if events else []
    outputs = result.body["outputs"]
    assert all(output.startswith(text) for output, text in zip(outputs, texts, strict=False)), "deltas are a prefix"
    return outputs


def test_a_short_job_is_answered_when_its_own_rows_are_done(service):
    """A 4-token request batched with 256-token ones gets its result after about 4 decode
    steps, long before they end (the micro checkpoint never emits EOS: they run to 256)."""
    jobs = [
        gen(inputs=INPUTS[1:], max_new_tokens=256),
        gen(inputs=INPUTS[:1], max_new_tokens=4),
        gen(instruction="Count the words.", inputs=INPUTS[1:], max_new_tokens=256),
    ]
    # Adapters generated and cached first: the timings below are decoding only.
    service.run([AdapterCreateRequest(instructions=[INSTRUCTION, "Count the words."])])
    _, results, seconds, steps = collect(service, jobs)
    assert [r.status for r in results] == [200, 200, 200]
    assert results[1].body["finish_reasons"] == ["length"] and results[0].body["finish_reasons"] == ["length"]
    assert steps[1] < steps[0] and steps[1] < steps[2]
    assert seconds[1] * 10 < min(seconds[0], seconds[2]), f"short answered at {seconds[1]:.3f}s, long at {seconds[0]:.3f}s"
    assert results[1] == service.run(jobs[1:2])[0], "the same answer as alone"


def test_events_only_for_stream_jobs_and_they_add_up_to_the_result(service):
    jobs = [gen(stream=True, max_new_tokens=40), gen(max_new_tokens=40), gen(stream=True, n=2, temperature=1.0, seed=3)]
    events, results, _, _ = collect(service, jobs)
    assert len(events[0]) > 3 and events[1] == [] and events[2]
    assert all(len(event.deltas) == 2 for event in events[0]) and all(len(event.deltas) == 4 for event in events[2])
    assert streamed_text(events[0], results[0]) == results[1].body["outputs"], "streaming does not change the text"
    assert results[0].body["usage"] == results[1].body["usage"]
    assert results == service.run(jobs), "seeded and greedy jobs give the same results again"


def test_a_stream_interrupted_by_a_failed_batch_continues_alone_without_repeating(service, model, monkeypatch):
    """The batched decode fails after some steps (a bug, simulated): a stream job that already
    sent text is decoded again alone and sends only what follows, even sampled without a seed
    (the server seeds every sampled row); a job that is done keeps its result."""
    jobs = [gen(stream=True, temperature=1.0, max_new_tokens=30), gen(inputs=INPUTS[:1], max_new_tokens=2), gen(max_new_tokens=9)]
    original = model.generate_stream

    def failing_after_6_steps(inputs, *args, **kwargs):
        steps = original(inputs, *args, **kwargs)
        if len(inputs) < 5:  # a job alone: no failure
            return steps

        def broken():
            for step, updates in enumerate(steps):
                if step == 6:
                    raise RuntimeError("simulated failure mid-batch")
                yield updates

        return broken()

    monkeypatch.setattr(model, "generate_stream", failing_after_6_steps)
    events, results, _, _ = collect(service, jobs)
    assert [r.status for r in results] == [200, 200, 200]
    assert len(events[0]) > 3
    streamed_text(events[0], results[0])  # what was sent is a prefix of the result: nothing sent twice
    assert results[2] == service.run(jobs[2:])[0]


# ---- over HTTP -----------------------------------------------------------------------------


def sse(response) -> list[tuple[float, object]]:
    """(arrival time, parsed data) of each event of a server-sent event stream; [DONE] as a str."""
    start, events = time.perf_counter(), []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append((time.perf_counter() - start, data if data == "[DONE]" else json.loads(data)))
    return events


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def test_generate_streams_tokens_as_they_are_decoded(client):
    body = {"instruction": INSTRUCTION, "inputs": INPUTS[:1], "max_new_tokens": 256}
    expected = client.post("/v1/generate", json=body)
    assert expected.status_code == 200, expected.text
    with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = sse(response)
    assert events[-1][1] == "[DONE]" and events[-2][1] == expected.json(), "the last event is the whole response body"
    deltas = [(t, data["deltas"]) for t, data in events[:-2]]
    assert len(deltas) >= 5, "text arrives in many events, not one"
    assert "".join(d[0] for _, d in deltas) == expected.json()["outputs"][0]
    first, last = deltas[0][0], events[-2][0]
    assert first < 0.5 * last, f"the first text came at {first:.3f}s, the end at {last:.3f}s"


def test_generate_stream_shapes_deltas_like_outputs_and_refuses_before_streaming(client):
    body = {"instruction": INSTRUCTION, "inputs": INPUTS, "max_new_tokens": 12, "n": 2, "temperature": 1.0, "seed": 5}
    with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
        events = [data for _, data in sse(response)]
    final = events[-2]
    assert final == client.post("/v1/generate", json=body).json()
    assert all(len(e["deltas"]) == 2 and all(len(per) == 2 for per in e["deltas"]) for e in events[:-2])
    joined = [["".join(e["deltas"][i][c] for e in events[:-2]) for c in range(2)] for i in range(2)]
    assert joined == final["outputs"]
    # Refused before any event: the status and JSON error of a plain request.
    response = client.post("/v1/generate", json={"adapter_id": "0" * 32, "inputs": ["x"], "stream": True})
    assert response.status_code == 404 and response.json()["error"]["message"]


def test_chat_stream_is_openai_chunks(client):
    body = {
        "model": BASE_MODEL_ID,
        "messages": [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": INPUTS[0]}],
        "max_tokens": 30,
    }
    expected = client.post("/v1/chat/completions", json=body).json()
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=streamed) as response:
        assert response.status_code == 200
        chunks = [data for _, data in sse(response)]
    assert chunks[-1] == "[DONE]"
    chunks = chunks[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(contents) > 2 and "".join(contents) == expected["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == expected["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])


def test_the_openai_client_streams(server, client):
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": INPUTS[1]}]
    reply = api.chat.completions.create(model=BASE_MODEL_ID, messages=messages, max_tokens=20, n=2, temperature=1, seed=9)
    stream = api.chat.completions.create(
        model=BASE_MODEL_ID,
        messages=messages,
        max_tokens=20,
        n=2,
        temperature=1,
        seed=9,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, reasons, usage = ["", ""], [None, None], None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    assert texts == [choice.message.content for choice in reply.choices]
    assert reasons == ["length", "length"] and usage.completion_tokens == 40 == reply.usage.completion_tokens
