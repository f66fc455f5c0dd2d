"""AdapterService without HTTP: one forward pass per batch, per-job errors, registry checks."""

from __future__ import annotations

import io
import tarfile

import pytest

from serving import metrics
from serving.jobs import ExportRequest
from serving.registry import Registry
from serving.schemas import AdapterCreateRequest, GenerateRequest
from serving.service import AdapterService
from tests.serving.promtext import parse, value

INSTRUCTIONS = ["Reverse the list.", "Sort the items of the list alphabetically.", "Count the words."]
INPUTS = ["apple, river, stone", "green, 7, house, cloud seven"]
LONG = "apple river stone " * 60


@pytest.fixture()
def service(model, tmp_path):
    return AdapterService(model, Registry(tmp_path / "state", model.fingerprint), tmp_path / "state", cache_bytes=64 * 2**20)


def gen(**kwargs) -> GenerateRequest:
    return GenerateRequest(**{"inputs": INPUTS, "max_new_tokens": 8, **kwargs})


def count_generate_calls(model, monkeypatch) -> list[int]:
    """Rows of each decode the service starts (TagiModel.generate_stream calls)."""
    calls: list[int] = []
    original = model.generate_stream

    def spy(inputs, *args, **kwargs):
        calls.append(len(inputs))
        return original(inputs, *args, **kwargs)

    monkeypatch.setattr(model, "generate_stream", spy)
    return calls


def test_a_mixed_batch_is_one_forward_pass_with_the_outputs_of_each_request_alone(service, model, monkeypatch):
    created = service.run([AdapterCreateRequest(instruction=INSTRUCTIONS[2])])[0]
    jobs = [
        gen(instruction=INSTRUCTIONS[0]),
        gen(instruction=INSTRUCTIONS[1], fusion=False),
        gen(),  # the plain base model
        gen(adapter_id=created.body["adapter_id"], inputs=INPUTS[:1], max_new_tokens=4),
    ]
    alone = [service.run([job])[0] for job in jobs]
    calls = count_generate_calls(model, monkeypatch)
    together = service.run(jobs)
    assert calls == [2 + 2 + 2 + 1], "every request of the batch in one model.generate call"
    assert together == alone and all(r.status == 200 for r in together)
    assert len({tuple(r.body["outputs"]) for r in together[:3]}) == 3, "adapters change the outputs"
    assert together[2].body["adapter_id"] is None


def test_a_bad_job_fails_alone(service, model, monkeypatch):
    calls = count_generate_calls(model, monkeypatch)
    results = service.run(
        [
            gen(instruction=INSTRUCTIONS[0]),
            gen(instruction=INSTRUCTIONS[0], inputs=["fine", LONG]),
            gen(instruction=LONG),
            gen(adapter_id="0" * 32),
            AdapterCreateRequest(instruction=INSTRUCTIONS[1]),
        ]
    )
    assert [r.status for r in results] == [200, 413, 413, 404, 200]
    # Inputs are tokenized once, inside the batched call: the too-long one fails that call,
    # then each request runs alone and only its own request gets the error.
    assert calls == [2 + 2, 2, 2]
    assert "input 1 is" in results[1].body["error"]["message"]
    assert results[0] == service.run([gen(instruction=INSTRUCTIONS[0])])[0]


def test_a_batch_failure_falls_back_per_request_and_a_bug_is_a_500(service, model, monkeypatch, caplog):
    """Something other than the user's mistake fails the batched decode (here: it raises whenever
    the request that asks for 13 tokens is in it): each request is retried alone, the one that
    fails alone gets a 500 whose body names an error id but no exception text (the id is in the
    log, with the traceback), the others their normal outputs."""
    jobs = [gen(instruction=INSTRUCTIONS[0], max_new_tokens=13), gen(instruction=INSTRUCTIONS[1]), gen()]
    expected = [service.run([job])[0] for job in jobs[1:]]
    original, sizes = model.generate_stream, []

    def failing(inputs, *args, **kwargs):
        sizes.append(len(inputs))
        if 13 in kwargs["max_new_tokens"]:
            raise RuntimeError("simulated kernel failure")
        return original(inputs, *args, **kwargs)

    monkeypatch.setattr(model, "generate_stream", failing)
    results = service.run(jobs)
    assert [r.status for r in results] == [500, 200, 200]
    message = results[0].body["error"]["message"]
    assert message.startswith("internal error (error id ") and "simulated" not in message and "RuntimeError" not in message
    error_id = message.split("error id ")[1].split(",")[0]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records), "the id is logged with the traceback"
    assert results[1:] == expected
    assert sizes == [6, 2, 2, 2], "one batched call, then each request alone"


def test_text_that_is_not_unicode_fails_only_its_own_job(service, model, monkeypatch):
    """A lone UTF-16 surrogate (valid JSON, not encodable text) in an instruction, an adapter id,
    an input or a stop string: the HTTP edge refuses it, but the worker must not depend on that.
    Built with model_construct, as no validation would let it through."""
    surrogate = "Sort \ud800 it"
    good = [gen(instruction=INSTRUCTIONS[0]), AdapterCreateRequest(instruction=INSTRUCTIONS[1]), gen()]
    expected = [service.run([job])[0] for job in good]
    bad = [
        GenerateRequest.model_construct(instruction=surrogate, inputs=INPUTS, max_new_tokens=8),
        GenerateRequest.model_construct(adapter_id=surrogate, inputs=INPUTS, max_new_tokens=8),
        GenerateRequest.model_construct(instruction=INSTRUCTIONS[0], inputs=[INPUTS[0], surrogate], max_new_tokens=8),
        GenerateRequest.model_construct(instruction=INSTRUCTIONS[0], inputs=INPUTS, max_new_tokens=8, stop=[surrogate]),
        AdapterCreateRequest.model_construct(instruction=None, instructions=[INSTRUCTIONS[2], surrogate]),
    ]
    calls = count_generate_calls(model, monkeypatch)
    results = service.run([good[0], *bad[:3], good[1], *bad[3:], good[2]])
    assert [r.status for r in results] == [200, 422, 422, 422, 200, 422, 422, 200]
    assert [results[0], results[7]] == [expected[0], expected[2]]
    assert results[4].body["adapter_id"] == expected[1].body["adapter_id"] and results[4].body["cached"]
    assert all("not valid Unicode" in r.body["error"]["message"] for r in results if r.status == 422)
    assert calls == [2 + 2], "the good generate jobs still share one decode"


def test_created_adapters_are_registered_and_cached(service):
    first = service.run([AdapterCreateRequest(instruction=INSTRUCTIONS[0])])[0].body
    second = service.run([AdapterCreateRequest(instruction=INSTRUCTIONS[0])])[0].body
    assert (first["cached"], second["cached"]) == (False, True) and second["generation_ms"] == 0
    record = service.registry.get(first["adapter_id"])
    assert record.instruction == INSTRUCTIONS[0] and record.num_parameters == first["num_parameters"]
    by_instruction = service.run([gen(instruction=INSTRUCTIONS[1])])[0]
    assert service.registry.get(by_instruction.body["adapter_id"]) is not None, "generate registers its adapter too"


def test_a_deleted_id_is_refused_even_while_cached(service):
    adapter_id = service.run([AdapterCreateRequest(instruction=INSTRUCTIONS[0])])[0].body["adapter_id"]
    assert adapter_id in service.cache
    service.registry.delete(adapter_id)  # e.g. DELETE through another process
    assert service.run([gen(adapter_id=adapter_id)])[0].status == 404
    assert adapter_id not in service.cache
    assert service.run([gen(instruction=INSTRUCTIONS[0])])[0].status == 200, "the instruction still works"


def test_evicted_adapters_are_rebuilt_identically(model, tmp_path):
    one = model.adapter(INSTRUCTIONS[0]).nbytes
    before = parse(metrics.render().decode())
    service = AdapterService(model, Registry(tmp_path, model.fingerprint), tmp_path, cache_bytes=int(one * 1.5))
    first = service.run([gen(instruction=INSTRUCTIONS[0])])[0]
    service.run([gen(instruction=INSTRUCTIONS[1])])
    stats = service.cache.stats()
    assert stats.evictions == 1 and stats.entries == 1 and stats.bytes <= int(one * 1.5)
    assert service.run([gen(instruction=INSTRUCTIONS[0])])[0] == first
    samples = parse(metrics.render().decode())
    delta = lambda name: value(samples, name) - value(before, name)  # noqa: E731
    assert delta("tagi_adapter_cache_evictions_total") == 2
    assert delta("tagi_adapter_cache_misses_total") == 3


def test_export_builds_a_peft_archive(service):
    adapter_id = service.run([AdapterCreateRequest(instruction=INSTRUCTIONS[0])])[0].body["adapter_id"]
    result = service.run([ExportRequest(adapter_id=adapter_id)])[0]
    assert result.status == 200
    with tarfile.open(fileobj=io.BytesIO(result.body["archive"]), mode="r:gz") as tar:
        names = set(tar.getnames())
    assert {f"{adapter_id}/adapter_config.json", f"{adapter_id}/adapter_model.safetensors"} <= names
    assert service.run([ExportRequest(adapter_id="0" * 32)])[0].status == 404


def test_the_peft_swap_baseline_gives_the_same_outputs_without_fusion(model, checkpoint_dir, tmp_path):
    from serving.baseline import SwapPerRequestEngine

    swap = AdapterService(
        model,
        Registry(tmp_path, model.fingerprint),
        tmp_path,
        cache_bytes=2**26,
        engine=SwapPerRequestEngine(model, checkpoint_dir),
    )
    mixed = AdapterService(model, Registry(tmp_path, model.fingerprint), tmp_path, cache_bytes=2**26)
    jobs = [gen(instruction=text, fusion=False) for text in INSTRUCTIONS] + [gen()]
    assert swap.run(jobs) == mixed.run(jobs)
    refused = swap.run([gen(instruction=INSTRUCTIONS[0], fusion=True)])[0]
    assert refused.status == 422 and "cannot fuse" in refused.body["error"]["message"]
    for sampled in (gen(fusion=False, temperature=0.5), gen(fusion=False, stop=["a"])):
        refused = swap.run([sampled])[0]
        assert refused.status == 422 and "decodes greedily" in refused.body["error"]["message"]
    assert swap.run([gen(fusion=False, n=2)]) == mixed.run([gen(fusion=False, n=2)]), "greedy choices are all the same"
