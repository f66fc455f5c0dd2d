"""AdapterService without HTTP: one forward pass per batch, per-job errors, registry checks."""

from __future__ import annotations

import tarfile

import pytest

from serving.jobs import CreateJob, ExportJob, GenerateJob, JobResult, parse_job
from serving import metrics
from serving.registry import Registry
from serving.service import AdapterService
from tests.serving.promtext import parse, value

INSTRUCTIONS = ["Reverse the list.", "Sort the items of the list alphabetically.", "Count the words."]
INPUTS = ["apple, river, stone", "green, 7, house, cloud seven"]
LONG = "apple river stone " * 60


@pytest.fixture()
def service(model, tmp_path):
    return AdapterService(model, Registry(tmp_path / "state", model.fingerprint), tmp_path / "state", cache_bytes=64 * 2**20)


def gen(**kwargs) -> GenerateJob:
    return GenerateJob(**{"inputs": INPUTS, "max_new_tokens": 8, **kwargs})


def count_generate_calls(model, monkeypatch) -> list[int]:
    calls: list[int] = []
    original = model.generate

    def spy(inputs, *args, **kwargs):
        calls.append(len(inputs))
        return original(inputs, *args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    return calls


def test_a_mixed_batch_is_one_forward_pass_with_the_outputs_of_each_request_alone(service, model, monkeypatch):
    created = service.run([CreateJob(instruction=INSTRUCTIONS[2])])[0]
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
    results = service.run([
        gen(instruction=INSTRUCTIONS[0]),
        gen(instruction=INSTRUCTIONS[0], inputs=["fine", LONG]),
        gen(instruction=LONG),
        gen(adapter_id="0" * 32),
        parse_job({"op": "explode"}),
        CreateJob(instruction=INSTRUCTIONS[1]),
    ])
    assert [r.status for r in results] == [200, 413, 413, 404, 400, 200]
    assert calls == [2]
    assert "input 1 is" in results[1].body["error"]["message"]


def test_created_adapters_are_registered_and_cached(service):
    first = service.run([CreateJob(instruction=INSTRUCTIONS[0])])[0].body
    second = service.run([CreateJob(instruction=INSTRUCTIONS[0])])[0].body
    assert (first["cached"], second["cached"]) == (False, True) and second["generation_ms"] == 0
    record = service.registry.get(first["adapter_id"])
    assert record.instruction == INSTRUCTIONS[0] and record.num_parameters == first["num_parameters"]
    by_instruction = service.run([gen(instruction=INSTRUCTIONS[1])])[0]
    assert service.registry.get(by_instruction.body["adapter_id"]) is not None, "generate registers its adapter too"


def test_a_deleted_id_is_refused_even_while_cached(service):
    adapter_id = service.run([CreateJob(instruction=INSTRUCTIONS[0])])[0].body["adapter_id"]
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


def test_export_writes_a_peft_archive(service):
    adapter_id = service.run([CreateJob(instruction=INSTRUCTIONS[0])])[0].body["adapter_id"]
    result = service.run([ExportJob(adapter_id=adapter_id)])[0]
    assert result.status == 200
    with tarfile.open(result.body["path"]) as tar:
        names = set(tar.getnames())
    assert {f"{adapter_id}/adapter_config.json", f"{adapter_id}/adapter_model.safetensors"} <= names
    assert service.run([ExportJob(adapter_id="0" * 32)])[0].status == 404


def test_results_round_trip_as_dicts():
    result = JobResult.error(413, "too long")
    assert JobResult.from_dict(result.to_dict()) == result and not result.ok


def test_the_peft_swap_baseline_gives_the_same_outputs_without_fusion(model, checkpoint_dir, tmp_path):
    from serving.baseline import SwapPerRequestEngine

    swap = AdapterService(model, Registry(tmp_path, model.fingerprint), tmp_path, cache_bytes=2**26,
                          engine=SwapPerRequestEngine(model, checkpoint_dir))
    mixed = AdapterService(model, Registry(tmp_path, model.fingerprint), tmp_path, cache_bytes=2**26)
    jobs = [gen(instruction=text, fusion=False) for text in INSTRUCTIONS] + [gen()]
    assert swap.run(jobs) == mixed.run(jobs)
    refused = swap.run([gen(instruction=INSTRUCTIONS[0], fusion=True)])[0]
    assert refused.status == 422 and "cannot fuse" in refused.body["error"]["message"]
