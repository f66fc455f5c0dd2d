"""The public HTTP API, as FastAPI routes on LitServe's app.

Routes that need the model put a job on the inference workers' queue (JobQueue) and wait for
its result; routes that only need the registry (list, metadata, delete, /v1/models) answer
from SQLite in the HTTP process itself. Bodies are validated by the pydantic schemas before
anything is queued.

What a DELETE means across workers: the registry row goes, and every worker checks the
registry for each id-addressed request before use, so a deleted id is 404 everywhere at once
even where a worker still caches its weights. Posting the same instruction again re-creates
the same id.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import FastAPI, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse, StreamingResponse

from serving import metrics as prometheus
from serving.errors import ServingError, UnknownAdapter
from serving.jobs import ExportRequest, JobEvent, JobResult
from serving.openapi import BODY_ERRORS, JOB_ERRORS, errors
from serving.pipeline import JobQueue
from serving.registry import Registry
from serving.schemas import (
    ADAPTER_ID_PATTERN,
    BASE_MODEL_ID,
    MAX_PAGE_SIZE,
    ONE_ADAPTER,
    PAGE_SIZE,
    RUBRIC_WITHOUT_INSTRUCTION,
    AdapterBatchCreated,
    AdapterCreated,
    AdapterCreateRequest,
    AdapterDeleted,
    AdapterInfo,
    AdapterList,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Decoding,
    GenerateRequest,
    GenerateResponse,
    ModelCard,
    ModelList,
    by_row,
    per_input,
)

PathId = Annotated[
    str,
    PathParam(
        description="an adapter id (32 lowercase hex digits): anything else is 404",
        json_schema_extra={"pattern": ADAPTER_ID_PATTERN},
    ),
]
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"rows per page, 1..{MAX_PAGE_SIZE}")]
AdapterCursor = Annotated[str | None, Query(pattern=ADAPTER_ID_PATTERN, description="the `next` of the previous page")]
ModelCursor = Annotated[
    str | None, Query(pattern=f"^({BASE_MODEL_ID}|[0-9a-f]{{32}})$", description="the `next` of the previous page")
]
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
GENERATION_RESPONSES = {200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}}} | errors(*BODY_ERRORS, 404, *JOB_ERRORS)
"""With `stream: true`, server-sent events instead of the JSON body (OpenAPI 3.1: `schema` is one event)."""


def add_routes(app: FastAPI, jobs: JobQueue, registry: Registry) -> None:
    started = int(time.time())

    # ---- adapters --------------------------------------------------------------------------

    @app.post(
        "/v1/adapters",
        response_model=AdapterCreated | AdapterBatchCreated,
        tags=["adapters"],
        responses=errors(*BODY_ERRORS, *JOB_ERRORS),
    )
    async def create_adapter(body: AdapterCreateRequest) -> dict:
        """Generate (or fetch from cache) the adapter of an instruction, or of each of a list of
        instructions (answered as {"adapters": [...]}, in order), and register it."""
        return await jobs.run(body)

    @app.get("/v1/adapters", response_model=AdapterList, tags=["adapters"], responses=errors(422))
    def list_adapters(limit: PageLimit = PAGE_SIZE, after: AdapterCursor = None) -> AdapterList:
        """The registered adapters by id, `limit` at a time: pass `next` as `after` for the next page."""
        rows = registry.list(limit + 1, after)
        has_more = len(rows) > limit
        return AdapterList(adapters=rows[:limit], has_more=has_more, next=rows[limit - 1].adapter_id if has_more else None)

    @app.get("/v1/adapters/{adapter_id}", response_model=AdapterInfo, tags=["adapters"], responses=errors(404))
    def get_adapter(adapter_id: PathId) -> AdapterInfo:
        info = registry.get(adapter_id) if _well_formed(adapter_id) else None
        if info is None:
            raise UnknownAdapter(adapter_id)
        return info

    @app.get(
        "/v1/adapters/{adapter_id}/peft",
        tags=["adapters"],
        response_class=Response,
        responses={200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}}
        | errors(404, *JOB_ERRORS),
    )
    async def download_peft(adapter_id: PathId) -> Response:
        """The adapter as a PEFT directory in a .tar.gz; untar, then PeftModel.from_pretrained.
        Built by a worker per request (serving/archive.py says why nothing is stored)."""
        if not _well_formed(adapter_id):
            raise UnknownAdapter(adapter_id)
        result = await jobs.run(ExportRequest(adapter_id=adapter_id))
        headers = {
            "Content-Disposition": f'attachment; filename="{adapter_id}.tar.gz"',
            "Content-Encoding": "identity",  # already gzip: keep GZipMiddleware off it
        }
        return Response(result["archive"], media_type="application/gzip", headers=headers)

    @app.delete("/v1/adapters/{adapter_id}", response_model=AdapterDeleted, tags=["adapters"], responses=errors(404))
    def delete_adapter(adapter_id: PathId) -> AdapterDeleted:
        if not (_well_formed(adapter_id) and registry.delete(adapter_id)):
            raise UnknownAdapter(adapter_id)
        return AdapterDeleted(adapter_id=adapter_id)

    # ---- generation ------------------------------------------------------------------------

    @app.post("/v1/generate", response_model=GenerateResponse, tags=["generation"], responses=GENERATION_RESPONSES)
    async def generate(body: GenerateRequest):
        """Outputs for every input, with the adapter of `instruction` or `adapter_id`. With
        `stream: true`, server-sent events: `{"deltas": [...]}` (the text each output gained,
        shaped like `outputs`) as tokens are decoded, then the response body, then `[DONE]`."""
        if body.instruction is None and body.adapter_id is None:
            raise ServingError(ONE_ADAPTER, 422)
        if not body.stream:
            return await jobs.run(body)
        return _event_stream(_generate_events(await _started(jobs.stream(body)), body.choices))

    @app.post("/v1/chat/completions", response_model=ChatCompletion, tags=["openai"], responses=GENERATION_RESPONSES)
    async def chat_completions(body: ChatCompletionRequest):
        """OpenAI-compatible. The system message is the instruction and the user message the
        input (model 'tagi-base'), or `model` is an adapter id and there is no system message.
        `stream: true` sends OpenAI's chat.completion.chunk events as tokens are decoded."""
        try:
            instruction, text = body.instruction_and_input()
        except ValueError as err:
            raise ServingError(str(err), 422) from err
        if body.model != BASE_MODEL_ID and instruction is not None:
            raise ServingError(
                f"model {body.model!r} is an adapter, which already is an instruction: drop the system message, "
                f"or use model {BASE_MODEL_ID!r} with it",
                422,
            )
        if body.rubric is not None and instruction is None:
            raise ServingError(f"{RUBRIC_WITHOUT_INSTRUCTION}: give the instruction as the system message", 422)
        adapter = None if body.model == BASE_MODEL_ID else body.model
        # A chat request is a generate job with one input. Its fields were validated as chat
        # fields (non-empty system message, token range, strict types): not validated again.
        job = GenerateRequest.model_construct(
            instruction=instruction,
            adapter_id=adapter,
            inputs=[text],
            max_new_tokens=body.max_new_tokens,
            fusion=body.fusion,
            rubric=body.rubric,
            **{name: getattr(body, name) for name in Decoding.model_fields},
        )
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        try:
            if body.stream:
                events = _chat_events(await _started(jobs.stream(job)), completion_id, created, body)
                return _event_stream(events)
            result = await jobs.run(job)
        except ServingError as err:
            if err.status == 404:
                raise ServingError(f"model {body.model!r} is neither {BASE_MODEL_ID!r} nor a known adapter id", 404) from err
            raise
        texts, reasons = by_row(result["outputs"], body.choices), by_row(result["finish_reasons"], body.choices)
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=result["adapter_id"] or BASE_MODEL_ID,
            choices=[
                ChatChoice(index=c, message={"role": "assistant", "content": text}, finish_reason=reason)
                for c, (text, reason) in enumerate(zip(texts, reasons, strict=True))
            ],
            usage=result["usage"],
        )

    @app.get("/v1/models", response_model=ModelList, tags=["openai"], responses=errors(422))
    def list_models(limit: PageLimit = PAGE_SIZE, after: ModelCursor = None) -> ModelList:
        """'tagi-base', then the registered adapters by id, `limit` at a time (`after`: 'tagi-base'
        or an adapter id, the `next` of the previous page)."""
        base = [ModelCard(id=BASE_MODEL_ID, created=started)] if after is None else []
        take = limit - len(base)
        rows = registry.list(take + 1, None if after == BASE_MODEL_ID else after)
        cards = base + [ModelCard(id=a.adapter_id, created=int(a.created_at), parent=BASE_MODEL_ID) for a in rows[:take]]
        has_more = len(rows) > take
        return ModelList(data=cards, has_more=has_more, next=cards[-1].id if has_more else None)

    # ---- operations ------------------------------------------------------------------------

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    def metrics() -> Response:
        """Prometheus exposition of every process of this server."""
        return Response(prometheus.render(), media_type=prometheus.CONTENT_TYPE)


def _well_formed(adapter_id: str) -> bool:
    """Anything else is no id: 404 without a registry query."""
    return re.fullmatch(ADAPTER_ID_PATTERN, adapter_id) is not None


Started = tuple[JobEvent | JobResult, AsyncIterator[JobEvent | JobResult]]
"""A job stream whose first item has arrived: that item, and the rest."""


async def _started(stream: AsyncIterator[JobEvent | JobResult]) -> Started:
    """Wait for the stream's first item before answering: a request refused outright (unknown
    id, an input over the token limit) then gets its own status and JSON error, as without
    streaming; only a failure after text has been sent becomes an error event."""
    first = await anext(stream)
    if isinstance(first, JobResult) and not first.ok:
        raise ServingError(first.body["error"]["message"], first.status)
    return first, stream


async def _items(started: Started) -> AsyncIterator[JobEvent | JobResult]:
    first, rest = started
    yield first
    async for item in rest:
        yield item


def _event_stream(events: AsyncIterator[dict]) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        async for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    # X-Accel-Buffering: a proxy in front (nginx) must pass each event on as it comes.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(lines(), media_type="text/event-stream", headers=headers)


async def _generate_events(started: Started, n: int) -> AsyncIterator[dict]:
    """Contract 3: the deltas of each step, the response body, or an error body."""
    sent: list[str] = []
    async for item in _items(started):
        if isinstance(item, JobEvent):
            sent = [old + new for old, new in zip(sent or [""] * len(item.deltas), item.deltas, strict=True)]
            yield {"deltas": per_input(item.deltas, n)}
            continue
        if item.ok:
            # The worker's last step comes as the result alone: the text it added goes out first.
            texts = by_row(item.body["outputs"], n)
            rest = [text[len(old) :] for text, old in zip(texts, sent or [""] * len(texts), strict=True)]
            if any(rest):
                yield {"deltas": per_input(rest, n)}
        yield item.body
        return


async def _chat_events(started: Started, completion_id: str, created: int, body: ChatCompletionRequest) -> AsyncIterator[dict]:
    """OpenAI's chat.completion.chunk stream: a role chunk per choice, content chunks, a finish
    chunk per choice, and with stream_options.include_usage a last chunk with `usage` and no
    choices (every other chunk then has "usage": null). The chunks name the model as requested:
    a tagi-base request learns its adapter id only from a non-streamed answer."""
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model}
    usage = {"usage": None} if body.include_usage else {}

    def chunk(index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return {**head, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **usage}

    n = body.choices
    for c in range(n):
        yield chunk(c, {"role": "assistant", "content": ""})
    sent = [""] * n
    async for item in _items(started):
        if isinstance(item, JobEvent):
            for c, delta in enumerate(item.deltas):
                if delta:
                    sent[c] += delta
                    yield chunk(c, {"content": delta})
            continue
        if not item.ok:
            yield item.body
            return
        texts, reasons = by_row(item.body["outputs"], n), by_row(item.body["finish_reasons"], n)
        for c in range(n):
            if rest := texts[c][len(sent[c]) :]:
                yield chunk(c, {"content": rest})
            yield chunk(c, {}, reasons[c])
        if body.include_usage:
            yield {**head, "choices": [], "usage": item.body["usage"]}
        return
