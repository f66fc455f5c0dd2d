"""The public HTTP API, as FastAPI routes on LitServe's app.

Routes that need the model put a job on the inference workers' queue (JobQueue) and wait for
its result; routes that only need the registry (list, metadata, delete, /v1/models) answer
from SQLite in the HTTP process itself. Bodies are validated by the pydantic schemas before
anything is queued.

What a DELETE means across workers: the registry row goes (and the PEFT archive), and every
worker checks the registry for each id-addressed request before use, so a deleted id is 404
everywhere at once even where a worker still caches its weights. Posting the same instruction
again re-creates the same id.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fastapi import FastAPI, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from serving import metrics as prometheus
from serving.archive import archive_path
from serving.errors import ServingError, UnknownAdapter
from serving.jobs import ExportRequest
from serving.pipeline import JobQueue
from serving.registry import Registry
from serving.schemas import (
    BASE_MODEL_ID,
    ONE_ADAPTER,
    AdapterBatchCreated,
    AdapterCreated,
    AdapterCreateRequest,
    AdapterDeleted,
    AdapterInfo,
    AdapterList,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    GenerateRequest,
    GenerateResponse,
    ModelCard,
    ModelList,
)


def add_routes(app: FastAPI, jobs: JobQueue, registry: Registry, state_dir: Path) -> None:
    started = int(time.time())

    # ---- adapters --------------------------------------------------------------------------

    @app.post("/v1/adapters", response_model=AdapterCreated | AdapterBatchCreated, tags=["adapters"])
    async def create_adapter(body: AdapterCreateRequest) -> dict:
        """Generate (or fetch from cache) the adapter of an instruction, or of each of a list of
        instructions (answered as {"adapters": [...]}, in order), and register it."""
        return await jobs.run(body)

    @app.get("/v1/adapters", response_model=AdapterList, tags=["adapters"])
    def list_adapters() -> AdapterList:
        return AdapterList(adapters=registry.list())

    @app.get("/v1/adapters/{adapter_id}", response_model=AdapterInfo, tags=["adapters"])
    def get_adapter(adapter_id: str) -> AdapterInfo:
        info = registry.get(adapter_id)
        if info is None:
            raise UnknownAdapter(adapter_id)
        return info

    @app.get("/v1/adapters/{adapter_id}/peft", tags=["adapters"], response_class=StreamingResponse)
    async def download_peft(adapter_id: str) -> StreamingResponse:
        """The adapter as a PEFT directory in a .tar.gz; untar, then PeftModel.from_pretrained."""
        if await run_in_threadpool(registry.get, adapter_id) is None:
            raise UnknownAdapter(adapter_id)
        path = archive_path(state_dir, adapter_id)
        if not path.exists():
            await jobs.run(ExportRequest(adapter_id=adapter_id))
        try:
            # Opened now, so a DELETE that unlinks the file mid-download cannot cut it short.
            handle = path.open("rb")
        except FileNotFoundError as err:
            raise UnknownAdapter(adapter_id) from err
        size = os.fstat(handle.fileno()).st_size
        headers = {
            "Content-Disposition": f'attachment; filename="{adapter_id}.tar.gz"',
            "Content-Length": str(size),
            "Content-Encoding": "identity",  # already gzip: keep GZipMiddleware off it
        }
        return StreamingResponse(_chunks(handle), media_type="application/gzip", headers=headers)

    @app.delete("/v1/adapters/{adapter_id}", response_model=AdapterDeleted, tags=["adapters"])
    def delete_adapter(adapter_id: str) -> AdapterDeleted:
        if not registry.delete(adapter_id):
            raise UnknownAdapter(adapter_id)
        archive_path(state_dir, adapter_id).unlink(missing_ok=True)
        return AdapterDeleted(adapter_id=adapter_id)

    # ---- generation ------------------------------------------------------------------------

    @app.post("/v1/generate", response_model=GenerateResponse, tags=["generation"])
    async def generate(body: GenerateRequest) -> dict:
        """Outputs for every input, with the adapter of `instruction` or `adapter_id`."""
        if body.instruction is None and body.adapter_id is None:
            raise ServingError(ONE_ADAPTER, 422)
        return await jobs.run(body)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, tags=["openai"])
    async def chat_completions(body: ChatCompletionRequest):
        """OpenAI-compatible. The system message is the instruction and the user message the
        input (model 'tagi-base'), or `model` is an adapter id and there is no system message."""
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
        adapter = None if body.model == BASE_MODEL_ID else body.model
        # A chat request is a generate job with one input. Its fields were validated as chat
        # fields (non-empty system message, token range, strict types): not validated again.
        job = GenerateRequest.model_construct(
            instruction=instruction, adapter_id=adapter, inputs=[text], max_new_tokens=body.max_new_tokens, fusion=body.fusion
        )
        try:
            result = await jobs.run(job)
        except ServingError as err:
            if err.status == 404:
                raise ServingError(f"model {body.model!r} is neither {BASE_MODEL_ID!r} nor a known adapter id", 404) from err
            raise
        completion = ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=result["adapter_id"] or BASE_MODEL_ID,
            choices=[ChatChoice(message={"role": "assistant", "content": result["outputs"][0]})],
        )
        if body.stream:
            return StreamingResponse(_sse(completion), media_type="text/event-stream")
        return completion

    @app.get("/v1/models", response_model=ModelList, tags=["openai"])
    def list_models() -> ModelList:
        adapters = [ModelCard(id=a.adapter_id, created=int(a.created_at), parent=BASE_MODEL_ID) for a in registry.list()]
        return ModelList(data=[ModelCard(id=BASE_MODEL_ID, created=started), *adapters])

    # ---- operations ------------------------------------------------------------------------

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def metrics() -> Response:
        """Prometheus exposition of every process of this server."""
        return Response(prometheus.render(), media_type=prometheus.CONTENT_TYPE)


def _chunks(handle: BinaryIO, size: int = 1 << 16) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(size):
            yield chunk


def _sse(completion: ChatCompletion) -> Iterator[str]:
    """`stream: true`: the whole answer as one chunk (generation is not incremental), then stop."""
    base = {"id": completion.id, "object": "chat.completion.chunk", "created": completion.created, "model": completion.model}
    content = completion.choices[0].message["content"]
    for delta, finish in (({"role": "assistant", "content": content}, None), ({}, "stop")):
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"
