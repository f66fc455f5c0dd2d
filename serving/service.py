"""AdapterService: what an inference worker does with a batch of jobs, without any HTTP.

For a batch it (1) reads the registry once for every adapter id involved, so an adapter
deleted through any process is refused here even if this worker still caches it, (2) gets
each adapter from the byte-bounded LRU cache or generates it from its instruction,
(3) answers create/export jobs, and (4) serves every generate job of the batch in ONE
`TagiModel.generate` call with per-row adapters, fusion and max_new_tokens, then splits the
outputs back per request. Greedy decoding of a row does not depend on the other rows, so a
request's outputs are those it would get alone.

Every job gets its own result: a bad job (too long, unknown id) never fails its batch-mates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hypernet.model import Adapter, InputTooLong, TagiModel, adapter_id
from serving.archive import write_archive
from serving.cache import LRUCache
from serving.errors import ServingError, UnknownAdapter
from serving.jobs import AnyJob, CreateJob, ExportJob, GenerateJob, JobResult
from serving import metrics
from serving.registry import Registry
from serving.schemas import AdapterCreated, AdapterInfo

log = logging.getLogger("tagi.serving")


@dataclass(frozen=True)
class RowGroup:
    """The rows of one generate request: they share an adapter and settings."""

    adapter: Adapter | None
    inputs: list[str]
    fusion: bool
    max_new_tokens: int


class Engine(Protocol):
    """How a batch of request groups becomes outputs (one list of strings per group)."""

    default_fusion: bool
    supports_fusion: bool

    def generate(self, groups: Sequence[RowGroup]) -> list[list[str]]: ...


class MixedBatchEngine:
    """All groups in one batched forward pass, each row with its own adapter."""

    supports_fusion = True

    def __init__(self, model: TagiModel) -> None:
        self.model = model
        self.default_fusion = model.config.fusion

    def generate(self, groups: Sequence[RowGroup]) -> list[list[str]]:
        inputs, adapters, fusion, limits = [], [], [], []
        for group in groups:
            n = len(group.inputs)
            inputs += group.inputs
            adapters += [group.adapter] * n
            fusion += [group.fusion] * n
            limits += [group.max_new_tokens] * n
        outputs = self.model.generate(inputs, adapters, fusion=fusion, max_new_tokens=limits)
        result, start = [], 0
        for group in groups:
            result.append(outputs[start : start + len(group.inputs)])
            start += len(group.inputs)
        return result


class AdapterService:
    def __init__(
        self,
        model: TagiModel,
        registry: Registry,
        state_dir: Path,
        cache_bytes: int,
        engine: Engine | None = None,
    ) -> None:
        self.model = model
        self.registry = registry
        self.state_dir = Path(state_dir)
        self.cache: LRUCache[Adapter] = LRUCache(cache_bytes)
        self.engine = engine or MixedBatchEngine(model)
        self._cache_reporter = metrics.CacheReporter()

    # ---- one batch ---------------------------------------------------------------------------

    def run(self, jobs: Sequence[AnyJob | JobResult]) -> list[JobResult]:
        """One result per job, in order. Entries that are already results (malformed jobs
        rejected while decoding) pass through."""
        results: list[JobResult | None] = [job if isinstance(job, JobResult) else None for job in jobs]
        adapters = self._adapters_for(jobs)
        groups: list[tuple[int, RowGroup]] = []
        for i, job in enumerate(jobs):
            if results[i] is not None:
                continue
            try:
                if isinstance(job, GenerateJob):
                    groups.append((i, self._row_group(job, adapters)))
                elif isinstance(job, CreateJob):
                    results[i] = self._created(adapters[adapter_id(self.model.fingerprint, job.instruction)])
                else:
                    results[i] = self._exported(job, adapters)
            except Exception as err:  # noqa: BLE001 - every failure becomes this job's own result
                results[i] = _failure(err)
        for i, result in self._generate(groups):
            results[i] = result
        self._record_batch(len(jobs))
        return [r if r is not None else JobResult.error(500, "internal error: job not answered") for r in results]

    # ---- adapters ----------------------------------------------------------------------------

    def _adapters_for(self, jobs: Sequence[AnyJob | JobResult]) -> dict[str, _Resolved]:
        """Every adapter the batch needs, by id: one registry read, cache or generation."""
        instructions: dict[str, str] = {}
        by_id: set[str] = set()
        for job in jobs:
            text = getattr(job, "instruction", None)
            if text is not None:
                instructions[adapter_id(self.model.fingerprint, text)] = text
            elif getattr(job, "adapter_id", None) is not None:
                by_id.add(job.adapter_id)
        known = self.registry.get_many(set(instructions) | by_id)
        resolved: dict[str, _Resolved] = {}
        new: list[AdapterInfo] = []
        for key in by_id - set(instructions) - set(known):
            self.cache.discard(key)  # deleted (or never created): never serve it again
            resolved[key] = _Resolved(error=UnknownAdapter(key))
        for key, text in [*instructions.items(), *((k, known[k].instruction) for k in by_id if k in known)]:
            if key in resolved:
                continue
            resolved[key] = item = self._adapter(key, text)
            if item.adapter is not None and key not in known:
                new.append(self._info(item.adapter))
        self.registry.add(new)
        self._record_cache()
        return resolved

    def _adapter(self, key: str, instruction: str) -> _Resolved:
        cached = self.cache.get(key)
        if cached is not None:
            return _Resolved(adapter=cached, cached=True)
        start = time.perf_counter()
        try:
            adapter = self.model.adapter(instruction)
        except InputTooLong as err:
            return _Resolved(error=ServingError(f"the instruction is too long: {err}", 413))
        except ValueError as err:
            return _Resolved(error=ServingError(str(err), 422))
        except Exception as err:  # noqa: BLE001 - fail the jobs that need this adapter, not the batch
            log.exception("generating an adapter failed")
            return _Resolved(error=ServingError(f"internal error: {type(err).__name__}: {err}", 500))
        seconds = time.perf_counter() - start
        metrics.ADAPTER_SECONDS.observe(seconds)
        self.cache.put(key, adapter)
        return _Resolved(adapter=adapter, generation_ms=seconds * 1000)

    def _info(self, adapter: Adapter) -> AdapterInfo:
        generator = self.model.config.generator
        weights = adapter.weights
        parameters = sum(t.numel() for d in (weights.lora_A, weights.lora_B) for t in d.values())
        return AdapterInfo(
            adapter_id=adapter.adapter_id,
            instruction=adapter.instruction,
            rank=generator.rank,
            target_modules=list(generator.target_modules),
            num_parameters=parameters,
            created_at=time.time(),
        )

    # ---- jobs --------------------------------------------------------------------------------

    def _created(self, item: _Resolved) -> JobResult:
        info = self._info(item.unwrap())
        body = AdapterCreated(
            adapter_id=info.adapter_id,
            rank=info.rank,
            target_modules=info.target_modules,
            num_parameters=info.num_parameters,
            cached=item.cached,
            generation_ms=round(item.generation_ms, 3),
        )
        return JobResult(200, body.model_dump())

    def _exported(self, job: ExportJob, adapters: dict[str, _Resolved]) -> JobResult:
        path = write_archive(adapters[job.adapter_id].unwrap(), self.state_dir)
        return JobResult(200, {"adapter_id": job.adapter_id, "path": str(path)})

    def _row_group(self, job: GenerateJob, adapters: dict[str, _Resolved]) -> RowGroup:
        key = adapter_id(self.model.fingerprint, job.instruction) if job.instruction is not None else job.adapter_id
        adapter = adapters[key].unwrap() if key is not None else None
        fusion = self.engine.default_fusion if job.fusion is None else job.fusion
        if fusion and adapter is not None and not self.engine.supports_fusion:
            raise ServingError("this server runs the peft-swap baseline engine, which cannot fuse: send fusion: false", 422)
        try:
            # Checked per request so that one input over the limit fails only its own request.
            self.model.tokenize(self.model.format_inputs(job.inputs), self.model.config.max_input_tokens, "input")
        except InputTooLong as err:
            raise ServingError(f"an input is too long: {err}", 413) from err
        return RowGroup(adapter, list(job.inputs), fusion, job.max_new_tokens)

    def _generate(self, groups: list[tuple[int, RowGroup]]) -> list[tuple[int, JobResult]]:
        if not groups:
            return []
        start = time.perf_counter()
        try:
            outputs = self.engine.generate([group for _, group in groups])
        except Exception:
            # Nothing known fails here (inputs were checked); if something unknown does, find
            # out which request it was instead of failing all of them.
            log.exception("batched generation failed; retrying its %d requests one by one", len(groups))
            return [(i, self._generate_alone(group)) for i, group in groups]
        self._record_forward(groups, time.perf_counter() - start)
        return [(i, _outputs(group, out)) for (i, group), out in zip(groups, outputs, strict=True)]

    def _generate_alone(self, group: RowGroup) -> JobResult:
        try:
            return _outputs(group, self.engine.generate([group])[0])
        except Exception as err:  # noqa: BLE001 - reported to this request only
            return _failure(err)

    # ---- metrics -----------------------------------------------------------------------------

    def _record_batch(self, jobs: int) -> None:
        metrics.BATCH_REQUESTS.observe(jobs)

    def _record_forward(self, groups: list[tuple[int, RowGroup]], seconds: float) -> None:
        distinct = {g.adapter.adapter_id for _, g in groups if g.adapter is not None}
        metrics.BATCH_ROWS.observe(sum(len(g.inputs) for _, g in groups))
        metrics.BATCH_ADAPTERS.observe(len(distinct))
        metrics.FORWARD_SECONDS.observe(seconds)

    def _record_cache(self) -> None:
        self._cache_reporter.report(self.cache.stats())


@dataclass(frozen=True)
class _Resolved:
    """An adapter for this batch, or why there is none."""

    adapter: Adapter | None = None
    error: ServingError | None = None
    cached: bool = False
    generation_ms: float = 0.0

    def unwrap(self) -> Adapter:
        if self.adapter is None:
            raise self.error or ServingError("no adapter", 500)
        return self.adapter


def _outputs(group: RowGroup, outputs: list[str]) -> JobResult:
    return JobResult(200, {"adapter_id": group.adapter.adapter_id if group.adapter else None, "outputs": outputs})


def _failure(err: Exception) -> JobResult:
    if isinstance(err, ServingError):
        return JobResult.error(err.status, str(err))
    log.exception("job failed", exc_info=err)
    return JobResult.error(500, f"internal error: {type(err).__name__}: {err}")
