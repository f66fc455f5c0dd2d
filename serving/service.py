"""AdapterService: what an inference worker does with a batch of jobs, without any HTTP.

For a batch it (1) names the adapter each job needs (its id hashed once, from the instruction
or given), (2) reads the registry once for all of them, so an adapter deleted through any
process is refused here even if this worker still caches it, (3) gets each adapter from the
byte-bounded LRU cache or generates it (all that the batch lacks in one generator pass), (4)
answers create/export jobs (a create job may list many instructions), and (5) serves every
generate job of the batch in ONE engine call with per-row adapters, fusion and max_new_tokens,
then splits the outputs back per request. Greedy decoding of a row does not depend on the
other rows, so a request's outputs are those it would get alone.

Every job gets its own result: a bad job (too long, unknown id) never fails its batch-mates.
Inputs are tokenized once, by the model inside the batched call; if that call fails (an input
over the token limit is the known case), each request of the batch is retried alone, so the
failure lands on the request that caused it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hypernet.errors import InputTooLong, UserError
from hypernet.model import Adapter, TagiModel, adapter_id
from serving import metrics
from serving.archive import write_archive
from serving.cache import LRUCache
from serving.errors import ServingError, UnknownAdapter
from serving.jobs import ExportRequest, Job, JobResult
from serving.registry import Registry
from serving.schemas import AdapterCreated, AdapterCreateRequest, AdapterInfo, GenerateRequest

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
    """All groups in one batched forward pass, each row with its own adapter. It owns the
    AdapterBatcher the model stacks per-row adapters into, reused from batch to batch."""

    supports_fusion = True

    def __init__(self, model: TagiModel) -> None:
        self.model = model
        self.default_fusion = model.config.fusion
        self.workspace = model.new_workspace()

    def generate(self, groups: Sequence[RowGroup]) -> list[list[str]]:
        inputs, adapters, fusion, limits = [], [], [], []
        for group in groups:
            n = len(group.inputs)
            inputs += group.inputs
            adapters += [group.adapter] * n
            fusion += [group.fusion] * n
            limits += [group.max_new_tokens] * n
        outputs = self.model.generate(inputs, adapters, fusion=fusion, max_new_tokens=limits, workspace=self.workspace)
        result, start = [], 0
        for group in groups:
            result.append(outputs[start : start + len(group.inputs)])
            start += len(group.inputs)
        return result


@dataclass(frozen=True)
class _Need:
    """The adapter a job needs: its id, and its instruction unless the job gave only the id."""

    key: str
    instruction: str | None


class AdapterService:
    def __init__(
        self,
        model: TagiModel,
        registry: Registry,
        state_dir: Path,
        cache_bytes: int,
        engine: Engine | None = None,
        worker: str = "0",
    ) -> None:
        """`worker` names this worker in the cache metrics (LitServe's worker id)."""
        self.model = model
        self.registry = registry
        self.state_dir = Path(state_dir)
        self.cache: LRUCache[Adapter] = LRUCache(cache_bytes)
        self.engine = engine or MixedBatchEngine(model)
        self._cache_reporter = metrics.CacheReporter(worker)

    # ---- one batch ---------------------------------------------------------------------------

    def run(self, jobs: Sequence[Job]) -> list[JobResult]:
        """One result per job, in order."""
        needs = [self._needs(job) for job in jobs]
        adapters = self._resolve([need for job_needs in needs for need in job_needs])
        results: dict[int, JobResult] = {}
        groups: list[tuple[int, RowGroup]] = []
        for i, (job, job_needs) in enumerate(zip(jobs, needs, strict=True)):
            try:
                if isinstance(job, AdapterCreateRequest):
                    results[i] = self._created(job, [adapters[need.key] for need in job_needs])
                    continue
                adapter = adapters[job_needs[0].key].unwrap() if job_needs else None
                if isinstance(job, GenerateRequest):
                    groups.append((i, self._row_group(job, adapter)))
                else:
                    path = write_archive(adapter, self.state_dir)
                    results[i] = JobResult(200, {"adapter_id": job.adapter_id, "path": str(path)})
            except Exception as err:  # noqa: BLE001 - every failure becomes this job's own result
                results[i] = _failure(err)
        results.update(self._generate(groups))
        metrics.BATCH_REQUESTS.observe(len(jobs))
        return [results[i] for i in range(len(jobs))]

    def _needs(self, job: Job) -> list[_Need]:
        """The one place a job's adapter ids are computed ([]: the plain base model)."""
        if isinstance(job, ExportRequest) or getattr(job, "adapter_id", None) is not None:
            return [_Need(job.adapter_id, None)]
        texts = job.texts if isinstance(job, AdapterCreateRequest) else [job.instruction] if job.instruction is not None else []
        return [_Need(adapter_id(self.model.fingerprint, text), text) for text in texts]

    # ---- adapters ----------------------------------------------------------------------------

    def _resolve(self, needs: list[_Need]) -> dict[str, _Resolved]:
        """Every adapter the batch needs, by id: one registry read, then cache or generation."""
        instructions = {need.key: need.instruction for need in needs if need.instruction is not None}
        by_id = {need.key for need in needs} - set(instructions)
        known = self.registry.get_many(instructions.keys() | by_id)
        resolved: dict[str, _Resolved] = {}
        new: list[AdapterInfo] = []
        for key in by_id - set(known):
            self.cache.discard(key)  # deleted (or never created): never serve it again
            resolved[key] = _Resolved(error=UnknownAdapter(key))
        for key in by_id & set(known):
            instructions[key] = known[key].instruction
        missing: dict[str, str] = {}
        for key, text in instructions.items():
            cached = self.cache.get(key)
            if cached is not None:
                resolved[key] = _Resolved(adapter=cached, cached=True)
            else:
                missing[key] = text
        resolved.update(self._generate_adapters(missing))
        for key in instructions:
            item = resolved[key]
            if item.adapter is not None and key not in known:
                new.append(self._info(item.adapter))
        self.registry.add(new)
        self._cache_reporter.report(self.cache.stats())
        return resolved

    def _generate_adapters(self, missing: dict[str, str]) -> dict[str, _Resolved]:
        """Every adapter the batch lacks, in one TagiModel.adapters pass (each one's tensors are
        those it gets alone); if the pass fails (an instruction over the token limit), each alone,
        so the failure lands only on the jobs that need that adapter."""
        if not missing:
            return {}
        start = time.perf_counter()
        try:
            adapters = self.model.adapters(list(missing.values()))
        except Exception as err:  # noqa: BLE001 - find out which instruction it was instead of failing all
            if len(missing) == 1:
                return {key: _Resolved(error=err) for key in missing}
            return {key: self._generate_adapters({key: text})[key] for key, text in missing.items()}
        seconds = (time.perf_counter() - start) / len(missing)  # each adapter's share of the pass
        resolved = {}
        for key, adapter in zip(missing, adapters, strict=True):
            metrics.ADAPTER_SECONDS.observe(seconds)
            self.cache.put(key, adapter)
            resolved[key] = _Resolved(adapter=adapter, generation_ms=seconds * 1000)
        return resolved

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

    def _created(self, job: AdapterCreateRequest, items: list[_Resolved]) -> JobResult:
        """A list fails as a whole on its first bad instruction, named by its index."""
        bodies = []
        for index, item in enumerate(items):
            try:
                info = self._info(item.unwrap())
            except UserError as err:
                if job.instructions is None:
                    raise
                raise type(err)(f"instruction {index}: {err}") from err
            body = AdapterCreated(
                adapter_id=info.adapter_id,
                rank=info.rank,
                target_modules=info.target_modules,
                num_parameters=info.num_parameters,
                cached=item.cached,
                generation_ms=round(item.generation_ms, 3),
            )
            bodies.append(body.model_dump())
        return JobResult(200, bodies[0] if job.instructions is None else {"adapters": bodies})

    def _row_group(self, job: GenerateRequest, adapter: Adapter | None) -> RowGroup:
        fusion = self.engine.default_fusion if job.fusion is None else job.fusion
        if fusion and adapter is not None and not self.engine.supports_fusion:
            raise ServingError("this server runs the peft-swap baseline engine, which cannot fuse: send fusion: false", 422)
        return RowGroup(adapter, list(job.inputs), fusion, job.max_new_tokens)

    def _generate(self, groups: list[tuple[int, RowGroup]]) -> dict[int, JobResult]:
        if not groups:
            return {}
        start = time.perf_counter()
        try:
            outputs = self.engine.generate([group for _, group in groups])
        except Exception as err:  # noqa: BLE001 - find out which request it was instead of failing all
            if isinstance(err, UserError):
                log.info("a request of the batch was refused (%s); serving its %d requests one by one", err, len(groups))
            else:
                log.exception("batched generation failed; serving its %d requests one by one", len(groups))
            return {i: self._generate_alone(group) for i, group in groups}
        _record_forward([group for _, group in groups], time.perf_counter() - start)
        return {i: _outputs(group, out) for (i, group), out in zip(groups, outputs, strict=True)}

    def _generate_alone(self, group: RowGroup) -> JobResult:
        start = time.perf_counter()
        try:
            outputs = self.engine.generate([group])[0]
        except Exception as err:  # noqa: BLE001 - reported to this request only
            return _failure(err)
        _record_forward([group], time.perf_counter() - start)
        return _outputs(group, outputs)


@dataclass(frozen=True)
class _Resolved:
    """An adapter for this batch, or why there is none."""

    adapter: Adapter | None = None
    error: Exception | None = None
    cached: bool = False
    generation_ms: float = 0.0

    def unwrap(self) -> Adapter:
        if self.adapter is None:
            raise self.error
        return self.adapter


def _record_forward(groups: list[RowGroup], seconds: float) -> None:
    metrics.BATCH_ROWS.observe(sum(len(g.inputs) for g in groups))
    metrics.BATCH_ADAPTERS.observe(len({g.adapter.adapter_id for g in groups if g.adapter is not None}))
    metrics.FORWARD_SECONDS.observe(seconds)


def _outputs(group: RowGroup, outputs: list[str]) -> JobResult:
    return JobResult(200, {"adapter_id": group.adapter.adapter_id if group.adapter else None, "outputs": outputs})


def _failure(err: Exception) -> JobResult:
    """The one mapping from an exception to a job's HTTP status: the user's mistakes are 4xx,
    anything else is a bug (500, logged with its traceback)."""
    if isinstance(err, ServingError):
        return JobResult.error(err.status, str(err))
    if isinstance(err, InputTooLong):
        return JobResult.error(413, f"over the checkpoint's token limit: {err}")
    if isinstance(err, UserError):
        return JobResult.error(422, str(err))
    log.error("job failed", exc_info=err)
    return JobResult.error(500, f"internal error: {type(err).__name__}: {err}")
