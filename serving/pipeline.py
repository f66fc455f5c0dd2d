"""The HTTP side of the job pipeline: put a validated job on the inference workers' queue and
follow what the worker streams back (serving/jobs.py), surviving a worker that dies holding it.

A route awaits `JobQueue.run(job)` (the final body) or iterates `JobQueue.stream(job)` (events,
then the final JobResult). Whatever happens, the iteration ends with a JobResult: the worker's,
a 504 when the server's timeout passes first, or a 503 when the worker that took the job died
and the job could not be retried (it had already streamed text, or its one retry was lost too).
A job lost with its worker before any text reached the client is submitted once more, to
whichever worker is free (another one, or the replacement serving.lifecycle.WorkerMonitor starts).

LitServe internals used here, because no public surface lets a route of ours submit to a
LitAPI's queue and read the answers one by one (LitServe's own request handlers turn them into a
finished Response and cannot retry); each is checked by tests/serving/test_litserve_internals.py:
- `server._get_request_queue(api_path)`: the workers' queue; an item is (response_queue_id, uid,
  monotonic submit time, payload), the time being what LitServe's loop compares with its timeout.
- `server.app.response_queue_id`: which HTTP process this is, the consumer workers answer to.
- `server.response_buffer[uid] = ResponseBufferItem(event, response_queue=deque())`: LitServe's
  response_queue_to_buffer task appends each (data, status) a worker sends for `uid` and sets
  the event; a START message (sent because the server sets restart_workers) records the id of the
  worker that took the job in `.worker_id`.
- `LitAPIStatus`: OK (data is one of our JobEvent/JobResult), ERROR (LitServe's 504 for a job that
  waited in the queue too long, or a failure outside the service's per-job handling) and
  FINISH_STREAMING (the worker's whole batch is done).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator

import litserve as ls
from litserve.utils import LitAPIStatus, ResponseBufferItem

from serving.errors import ServingError
from serving.jobs import Job, JobEvent, JobResult

POLL_S = 0.1
"""How often a waiting request checks whether its worker died: the longest it can take to notice."""
WORKER_LOST = "the inference worker serving this request stopped; the request was not completed, send it again"
log = logging.getLogger("tagi.serving")


class WorkerDeaths:
    """How many times each inference worker has died, in memory shared by every process of the
    server: the main process counts (serving.lifecycle.WorkerMonitor) and the HTTP processes,
    forked after it is created, read. A job whose worker's count grew since it was submitted is
    lost. (A job queued before a death and then taken by that worker's replacement looks lost
    too: it is retried, at the cost of computing it twice.)"""

    def __init__(self, workers: int) -> None:
        self._counts = multiprocessing.Array("i", workers)

    def record(self, worker: int) -> None:
        with self._counts.get_lock():
            self._counts[worker] += 1

    def snapshot(self) -> list[int]:
        return self._counts[:]

    def since(self, seen: list[int], worker: int) -> bool:
        return self._counts[worker] > seen[worker]


class _Lost:
    """Marks a job whose worker died before answering it."""


_LOST = _Lost()


class JobQueue:
    """Submit a job to the inference workers and follow its answer, at most `timeout` seconds."""

    def __init__(self, server: ls.LitServer, api: ls.LitAPI, timeout: float, deaths: WorkerDeaths) -> None:
        self._server = server
        self._api_path = api.api_path
        self.timeout = timeout
        self._deaths = deaths

    async def run(self, job: Job) -> dict:
        """The job's final body; raises ServingError with its status if it failed."""
        async for item in self.stream(job):
            if isinstance(item, JobResult):
                if not item.ok:
                    raise ServingError(item.body["error"]["message"], item.status)
                return item.body
        raise RuntimeError("a job stream ended without a result")  # stream() always ends with one

    async def stream(self, job: Job) -> AsyncIterator[JobEvent | JobResult]:
        """The job's events as the worker sends them, then its JobResult (always last)."""
        submitted = time.monotonic()  # a retry keeps it: the timeout bounds the whole request
        for attempt in (1, 2):
            streamed = False
            async for item in self._follow(job, submitted):
                if item is _LOST:
                    break
                yield item
                streamed = True
            else:
                return
            if streamed or attempt == 2:
                yield JobResult.error(503, WORKER_LOST)
                return
            log.warning("an inference worker died holding a %s job: submitted again", type(job).__name__)

    async def _follow(self, job: Job, submitted: float) -> AsyncIterator[JobEvent | JobResult | _Lost]:
        """One submission: its events, then its JobResult or _LOST."""
        server = self._server
        uid = uuid.uuid4().hex
        entry = ResponseBufferItem(event=asyncio.Event(), response_queue=deque())
        server.response_buffer[uid] = entry
        seen = self._deaths.snapshot()
        deadline = submitted + self.timeout
        try:
            server._get_request_queue(self._api_path).put((server.app.response_queue_id, uid, submitted, job))
            while True:
                while entry.response_queue:
                    data, status = entry.response_queue.popleft()
                    if status != LitAPIStatus.OK:
                        yield self._failure(data, status)
                        return
                    yield data
                    if isinstance(data, JobResult):
                        return
                if entry.worker_id is not None and self._deaths.since(seen, entry.worker_id):
                    yield _LOST
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # LitServe drops a job that waited in the queue longer than this too (the
                    # ERROR below), but nothing of LitServe's bounds a job a worker has taken.
                    yield self._timed_out()
                    return
                entry.event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(entry.event.wait(), min(remaining, POLL_S))
        finally:
            server.response_buffer.pop(uid, None)  # also when the client goes away mid-stream

    def _timed_out(self) -> JobResult:
        return JobResult.error(504, f"no inference worker answered within {self.timeout:g} s")

    def _failure(self, data: object, status: str) -> JobResult:
        """A JobResult for what LitServe sent instead of one. Never the worker's exception text:
        the worker logged it, and it may name server paths."""
        if status == LitAPIStatus.ERROR and getattr(data, "status_code", None) == 504:
            return self._timed_out()
        log.error("inference worker answered %s instead of a result", status)
        return JobResult.error(500, "internal error in the inference worker (see the server log)")
