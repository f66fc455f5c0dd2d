"""AdapterService: what an inference worker does with a batch of jobs, without any HTTP.

For a batch it (1) names the adapter each job needs (its id hashed once, from the instruction
or given), (2) reads the registry once for all of them, so an adapter deleted through any
process is refused here even if this worker still caches it, (3) gets each adapter from the
byte-bounded LRU cache or generates it (all that the batch lacks in one generator pass), (4)
answers create/export jobs (a create job may list many instructions), and (5) decodes every
generate job of the batch in ONE engine call with per-row adapters, fusion, max_new_tokens and
sampling, streaming: a job's result goes out as soon as its own rows are done, so a 4-token
request batched with 256-token ones is answered after about 4 decode steps. A row's tokens do
not depend on the other rows (greedy, or sampled with its own seed), so a request's outputs
are those it would get alone.

Every job gets its own result: a bad job (too long, unknown id, text that is not valid
Unicode) never fails its batch-mates. Each step that serves the whole batch at once (adapter
ids, the registry read, adapter generation, decoding) falls back to one job at a time when it
fails, so the failure lands on the job that caused it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hypernet.decoding import RowUpdate, Sampling
from hypernet.errors import InputTooLong, UserError
from hypernet.model import Adapter, TagiModel, adapter_id
from serving import metrics
from serving.archive import build_archive
from serving.cache import LRUCache
from serving.errors import ServingError, UnknownAdapter, report_bug
from serving.jobs import ExportRequest, Job, JobEvent, JobResult, Step
from serving.registry import Registry
from serving.schemas import AdapterCreated, AdapterCreateRequest, AdapterInfo, GenerateRequest, per_input

log = logging.getLogger("tagi.serving")

SEED_BITS = 63
"""Seeds the server draws for sampled requests that sent none (a row is always seeded, so a
request retried alone after a failed batch continues exactly where its stream stopped)."""


@dataclass(frozen=True)
class RowGroup:
    """The rows of one generate request: they share an adapter and settings. One row per
    input and choice, input-major (input 0's n choices first), each with its own sampling."""

    adapter: Adapter | None
    inputs: list[str]
    fusion: bool
    max_new_tokens: int
    sampling: list[Sampling]


class Engine(Protocol):
    """How a batch of request groups is decoded: RowUpdates as in TagiModel.generate_stream, rows
    numbered across the groups in order."""

    default_fusion: bool
    supports_fusion: bool
    supports_sampling: bool

    def stream(self, groups: Sequence[RowGroup]) -> Iterator[list[RowUpdate]]: ...


class MixedBatchEngine:
    """All groups in one batched decode, each row with its own adapter and sampling. It owns the
    AdapterBatcher the model stacks per-row adapters into, reused from batch to batch."""

    supports_fusion = True
    supports_sampling = True

    def __init__(self, model: TagiModel) -> None:
        self.model = model
        self.default_fusion = model.config.fusion
        self.workspace = model.new_workspace()

    def stream(self, groups: Sequence[RowGroup]) -> Iterator[list[RowUpdate]]:
        inputs, adapters, fusion, limits, sampling = [], [], [], [], []
        for group in groups:
            n = len(group.inputs)
            inputs += group.inputs
            adapters += [group.adapter] * n
            fusion += [group.fusion] * n
            limits += [group.max_new_tokens] * n
            sampling += group.sampling
        return self.model.generate_stream(
            inputs, adapters, fusion=fusion, max_new_tokens=limits, sampling=sampling, workspace=self.workspace
        )


@dataclass(frozen=True)
class _Need:
    """The adapter a job needs: its id, and its instruction unless the job gave only the id."""

    key: str
    instruction: str | None


@dataclass
class _Row:
    """One output row of a generate job as it is decoded. `sent` is the text already streamed
    to the client: kept when the job is decoded again alone after a failed batch."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    sent: str = ""


@dataclass
class _Decoding:
    """A generate job being decoded."""

    job: GenerateRequest
    group: RowGroup
    rows: list[_Row] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rows = self.rows or [_Row() for _ in self.group.inputs]

    def restart(self) -> None:
        """Decode again from the first token, remembering what the client already has."""
        self.rows = [_Row(sent=row.sent) for row in self.rows]

    @property
    def done(self) -> bool:
        return all(row.finish_reason is not None for row in self.rows)

    def event(self) -> JobEvent | None:
        """The text the rows gained since the last event (a stream job only); None if none."""
        if not self.job.stream:
            return None
        deltas = [row.text[len(row.sent) :] if len(row.text) > len(row.sent) else "" for row in self.rows]
        if not any(deltas):
            return None
        for row in self.rows:
            row.sent = max(row.sent, row.text, key=len)
        return JobEvent(deltas=deltas)

    def result(self) -> JobResult:
        if any(not row.text.startswith(row.sent) for row in self.rows):
            # Decoding alone after a failed batch gave other text than was already streamed
            # (rows are seeded, so only a bug gets here): the client cannot be given both.
            return _failure(RuntimeError("a stream retried alone diverged from the text already sent"))
        n = self.job.choices
        prompt = sum(row.prompt_tokens for row in self.rows[::n])  # each input once, as OpenAI counts
        completion = sum(row.completion_tokens for row in self.rows)
        body = {
            "adapter_id": self.group.adapter.adapter_id if self.group.adapter else None,
            "outputs": per_input([row.text for row in self.rows], n),
            "finish_reasons": per_input([row.finish_reason for row in self.rows], n),
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }
        return JobResult(200, body)


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
        """One result per job, in order (the stream's results, without its events)."""
        results: list[JobResult | None] = [None] * len(jobs)
        for step in self.stream(jobs):
            for i, item in enumerate(step):
                if isinstance(item, JobResult):
                    results[i] = item
        return results

    def stream(self, jobs: Sequence[Job]) -> Iterator[Step]:
        """Steps aligned with `jobs` (Contract 2 of issue 11): each job gets exactly one JobResult,
        as early as it is done (adapter jobs and failures in the first step), and a stream=true
        generate job gets a JobEvent whenever its outputs grew. Steps with no news are skipped."""
        metrics.BATCH_REQUESTS.observe(len(jobs))
        results: dict[int, JobResult] = {}
        needs: dict[int, list[_Need]] = {}
        for i, job in enumerate(jobs):
            try:
                needs[i] = self._needs(job)
            except Exception as err:  # noqa: BLE001 - every failure becomes this job's own result
                results[i] = _failure(err)
        adapters = self._resolve_isolated(needs, results)
        decoding: dict[int, _Decoding] = {}
        for i, job_needs in needs.items():
            if i in results:
                continue
            job = jobs[i]
            try:
                if isinstance(job, AdapterCreateRequest):
                    results[i] = self._created(job, [adapters[need.key] for need in job_needs])
                    continue
                adapter = adapters[job_needs[0].key].unwrap() if job_needs else None
                if isinstance(job, GenerateRequest):
                    decoding[i] = _Decoding(job, self._row_group(job, adapter))
                else:
                    results[i] = JobResult(200, {"adapter_id": job.adapter_id, "archive": build_archive(adapter)})
            except Exception as err:  # noqa: BLE001 - every failure becomes this job's own result
                results[i] = _failure(err)
        if results:
            yield [results.get(i) for i in range(len(jobs))]
        for news in self._decode(decoding):
            yield [news.get(i) for i in range(len(jobs))]

    def _needs(self, job: Job) -> list[_Need]:
        """The one place a job's adapter ids are computed ([]: the plain base model)."""
        if isinstance(job, ExportRequest) or getattr(job, "adapter_id", None) is not None:
            return [_Need(job.adapter_id, None)]
        texts = job.texts if isinstance(job, AdapterCreateRequest) else [t for t in (job.adapter_instruction,) if t is not None]
        return [_Need(adapter_id(self.model.fingerprint, text), text) for text in texts]

    # ---- adapters ----------------------------------------------------------------------------

    def _resolve_isolated(self, needs: dict[int, list[_Need]], failed: dict[int, JobResult]) -> dict[str, _Resolved]:
        """_resolve for the whole batch; if that fails (an id the registry cannot even look up),
        job by job, and a job whose adapters cannot be resolved gets its failure in `failed`."""
        wanted = {i: job_needs for i, job_needs in needs.items() if job_needs and i not in failed}
        try:
            return self._resolve([need for job_needs in wanted.values() for need in job_needs])
        except Exception:  # noqa: BLE001 - find out which job it was instead of failing all
            log.info("resolving the adapters of a batch failed; resolving its %d jobs one by one", len(wanted))
        resolved: dict[str, _Resolved] = {}
        for i, job_needs in wanted.items():
            try:
                resolved.update(self._resolve(job_needs))
            except Exception as err:  # noqa: BLE001 - reported to this job only
                failed[i] = _failure(err)
        return resolved

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
        """The job's rows and their settings, checked here, per job: whatever is wrong with one
        job (the engine cannot serve it, text that is not valid Unicode) must not reach the
        batched decode, where it would fail every job of the batch."""
        fusion = self.engine.default_fusion if job.fusion is None else job.fusion
        if fusion and adapter is not None and not self.engine.supports_fusion:
            raise ServingError("this server runs the peft-swap baseline engine, which cannot fuse: send fusion: false", 422)
        sampled = bool(job.temperature)
        if (sampled or job.stop_strings) and not self.engine.supports_sampling:
            raise ServingError(
                "this server runs the peft-swap baseline engine, which decodes greedily: send no temperature and no stop", 422
            )
        for text in (*job.inputs, *job.stop_strings):
            text.encode()  # UnicodeEncodeError (422) here, for this job only, not in the batch's tokenizer call
        settings = {name: value for name, value in (("temperature", job.temperature), ("top_p", job.top_p)) if value is not None}
        seed = job.seed if job.seed is not None else secrets.randbits(SEED_BITS) if sampled else None
        n = job.choices
        # Choice c samples with seed + c: n = 1 with seed s is the first choice of any n with seed s.
        choices = [
            Sampling(**settings, stop=job.stop_strings, seed=None if seed is None else (seed + c) % 2**64) for c in range(n)
        ]
        rows = [text for text in job.inputs for _ in range(n)]
        return RowGroup(adapter, rows, fusion, job.max_new_tokens, choices * len(job.inputs))

    def _decode(self, decoding: dict[int, _Decoding]) -> Iterator[dict[int, JobEvent | JobResult]]:
        """All generate jobs in one engine call; if it fails, every job not yet answered is
        decoded again alone, so the failure lands on the job that caused it (and a stream that
        had begun continues where it stopped: rows are seeded, so they replay the same text)."""
        if not decoding:
            return
        try:
            yield from self._decode_together(decoding)
            return
        except Exception as err:  # noqa: BLE001 - find out which request it was instead of failing all
            if isinstance(err, UserError):
                log.info("a request of the batch was refused (%s); serving its requests one by one", err)
            else:
                log.exception("batched generation failed; serving its requests one by one")
        for i, job in decoding.items():
            if job.done:
                continue
            job.restart()
            try:
                yield from self._decode_together({i: job})
            except Exception as err:  # noqa: BLE001 - reported to this request only
                yield {i: _failure(err)}

    def _decode_together(self, decoding: dict[int, _Decoding]) -> Iterator[dict[int, JobEvent | JobResult]]:
        """One engine call over the jobs not yet done: their news after every decode step."""
        pending = {i: job for i, job in decoding.items() if not job.done}
        owners = [(i, row) for i, job in pending.items() for row in job.rows]
        groups = [job.group for job in pending.values()]
        start = time.perf_counter()
        for updates in self.engine.stream(groups):
            touched: dict[int, _Decoding] = {}
            for update in updates:
                i, row = owners[update.row]
                row.text += update.delta
                row.prompt_tokens, row.completion_tokens = update.prompt_tokens, update.completion_tokens
                row.finish_reason = update.finish_reason or row.finish_reason
                touched[i] = pending[i]
            news = {i: job.result() if job.done else job.event() for i, job in touched.items()}
            news = {i: item for i, item in news.items() if item is not None}
            if news:
                yield news
        if not all(job.done for job in pending.values()):
            raise RuntimeError("the engine's stream ended before every row had finished")
        _record_forward(groups, time.perf_counter() - start)


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


def _failure(err: Exception) -> JobResult:
    """The one mapping from an exception to a job's HTTP status: the user's mistakes are 4xx,
    anything else is a bug: 500 with an error id, and the id is logged with the traceback (the
    message never carries the exception's text, which may hold internals)."""
    if isinstance(err, ServingError):
        return JobResult.error(err.status, str(err))
    if isinstance(err, InputTooLong):
        return JobResult.error(413, f"over the checkpoint's token limit: {err}")
    if isinstance(err, UserError):
        return JobResult.error(422, str(err))
    if isinstance(err, UnicodeError):
        return JobResult.error(422, "the text is not valid Unicode (a lone UTF-16 surrogate?)")
    return JobResult.error(500, report_bug(err))
