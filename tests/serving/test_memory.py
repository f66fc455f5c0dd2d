"""A worker's memory under a stream of new instructions levels off (issue 11, item 5).

The service of an inference worker, in this process, meets only instructions it has never seen:
every batch generates adapters, evicts others from a small cache and decodes. After a warm-up
(code paths, workspace and allocator pools reach their size), resident memory must stay flat
while four times as many instructions go by, and the cache must stay within its bound. The full
figures on the shipped checkpoint come from `tagi bench serve --parts memory`.
"""

from __future__ import annotations

from serving.registry import Registry
from serving.schemas import GenerateRequest
from serving.service import AdapterService

CACHE_BYTES = 256 * 1024
WORDS = "apple river stone green house cloud seven bright table paper garden silver music window".split()


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def batch(start: int) -> list[GenerateRequest]:
    """8 requests, each with an instruction no earlier one had, of varied lengths and shapes."""
    jobs = []
    for i in range(start, start + 8):
        instruction = f"Sort the words ({i}): " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(2 + i % 17))
        inputs = [" ".join(WORDS[(i + j + k) % len(WORDS)] for k in range(1 + (i + j) % 9)) for j in range(1 + i % 4)]
        jobs.append(GenerateRequest(instruction=instruction, inputs=inputs, max_new_tokens=4 + i % 13))
    return jobs


def serve(service: AdapterService, start: int, stop: int) -> None:
    for first in range(start, stop, 8):
        assert all(result.status == 200 for result in service.run(batch(first)))


def test_resident_memory_levels_off_under_new_instructions(model, tmp_path):
    service = AdapterService(model, Registry(tmp_path, model.fingerprint), tmp_path, CACHE_BYTES)
    serve(service, 0, 64)
    warm = rss_mb()
    serve(service, 64, 256)
    grown = rss_mb() - warm
    stats = service.cache.stats()
    assert stats.bytes <= CACHE_BYTES and stats.evictions > 150, stats
    # An adapter of this checkpoint is ~150 KB: keeping each one would add ~30 MB.
    assert grown < 16, f"RSS grew {grown:.1f} MB over 192 new instructions after the warm-up"
