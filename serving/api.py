"""The LitAPI: a thin shell that runs AdapterService in each inference worker.

LitServe spawns one process per worker, each with its own model, all reading ONE queue and
batching whatever is in it (up to max_batch_size requests within batch_timeout). The public
routes (serving/routes.py, through serving/pipeline.py) put validated jobs on that queue; this
class hands each batch to the service and streams back, per decode step, what each job gained
(serving/jobs.py): a streaming API, so tokens reach a client as they are decoded and a job that
is done is answered at once instead of when the longest job of its batch ends.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
from litserve.loops import BatchedStreamingLoop, StreamingLoop
from litserve.transport.base import MessageTransport
from litserve.utils import LitAPIStatus, LoopResponseType

from serving.jobs import Job, JobEvent, JobResult, Step
from serving.lifecycle import exit_when_orphaned
from serving.memory import map_large_allocations
from serving.settings import EngineName

JOBS_PATH = "/internal/jobs"
"""LitServe's own POST route for this API; the server removes it (jobs come from the typed routes)."""
log = logging.getLogger("tagi.serving")


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a spawned worker needs to build its service (pickled to it)."""

    checkpoint: Path
    state_dir: Path
    cache_bytes: int
    max_adapters: int
    engine: EngineName
    torch_threads: int


Sent = Step | JobEvent | JobResult | None
"""What predict yields: a step for a batch, or the one job's item of each step with batching off."""


class _SendsOnlyNews:
    """A LitServe streaming loop that sends nothing for a job with nothing new in a step.

    LitServe internal: `put_response` is a loop's one send to the HTTP side (its signature, and
    both loops calling it per job and step, are checked by tests/serving/test_litserve_internals.py).
    Without this, every step of a long job would cost one queue message per batch-mate that is
    done or silent; the HTTP side never has to see or filter a None."""

    def put_response(
        self,
        transport: MessageTransport,
        response_queue_id: int,
        uid: str,
        response_data: Any,
        status: str,
        response_type: LoopResponseType,
    ) -> None:
        if status == LitAPIStatus.OK and response_data is None:
            return
        super().put_response(transport, response_queue_id, uid, response_data, status, response_type)


class JobStreamLoop(_SendsOnlyNews, BatchedStreamingLoop):
    """Batches of jobs (--max-batch-size above 1)."""


class SingleJobStreamLoop(_SendsOnlyNews, StreamingLoop):
    """Batching off: one job at a time. LitServe's batched loop would do that too, but an idle
    worker would then poll the queue every millisecond where this one blocks on it."""


class TagiAPI(ls.LitAPI):
    def __init__(self, settings: WorkerSettings, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout,
            api_path=JOBS_PATH,
            stream=True,
            loop=JobStreamLoop() if max_batch_size > 1 else SingleJobStreamLoop(),
        )
        self.settings = settings
        self.service = None

    def setup(self, device: str) -> None:
        # The main process stops workers on shutdown; a Ctrl+C sent to the whole process group
        # must not interrupt them mid-batch first.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        exit_when_orphaned()
        map_large_allocations()  # before the model loads: its buffers too
        # Imported here: the main and HTTP processes import this module without loading torch.
        import torch
        from transformers.utils import logging as hf_logging

        import hypernet
        from serving.registry import Registry
        from serving.service import AdapterService

        if not logging.getLogger().handlers:  # a spawned worker starts with no logging set up
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        torch.set_num_threads(self.settings.torch_threads)
        model = hypernet.load(self.settings.checkpoint, device=device)
        engine = None
        if self.settings.engine == "peft-swap":
            from serving.baseline import SwapPerRequestEngine

            engine = SwapPerRequestEngine(model, self.settings.checkpoint)
        # LitServe internal: the variable its inference_worker sets before setup; no public API
        # tells a LitAPI which worker it is. Names the worker in logs and the cache metrics.
        # (test_litserve_internals; the per-worker delete test relies on distinct names)
        worker = os.environ.get("LITSERVE_WORKER_ID", "0")
        self.service = AdapterService(
            model,
            Registry(self.settings.state_dir, model.fingerprint, self.settings.max_adapters),
            self.settings.state_dir,
            self.settings.cache_bytes,
            engine=engine,
            worker=worker,
        )
        log.info("worker %s ready: %s engine, checkpoint %s", worker, self.settings.engine, model.fingerprint[:12])

    def authorize(self) -> None:
        """No-op on purpose: ApiKeyMiddleware checks every request (X-API-Key or Bearer), and
        defining this keeps LitServe's X-API-Key-only check off its own routes."""

    def decode_request(self, request: Job) -> Job:
        """The route already validated the job and LitServe's queue carried it as an object."""
        return request

    def predict(self, jobs: list[Job] | Job) -> Iterator[Sent]:
        """Batched, LitServe's default batch and unbatch pass our lists through as they are; with
        batching off, LitServe's loop hands over one job and takes its item of each step."""
        if self.max_batch_size == 1:
            for step in self.service.stream([jobs]):
                yield step[0]
            return
        yield from self.service.stream(jobs)

    def encode_response(self, steps: Iterator[Sent]) -> Iterator[Sent]:
        """Sent back as the objects; serving/pipeline.py turns them into HTTP responses."""
        yield from steps
