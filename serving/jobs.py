"""What the HTTP processes and the inference workers send each other.

Every operation that needs the model (create an adapter, generate, export a PEFT archive) is a
job on ONE LitServe queue, so that generate requests from /v1/generate and
/v1/chat/completions, whatever their instructions, land in the same dynamic batch. A job is
the request schema itself, validated once by the route in the HTTP process; it crosses to the
worker as that object (LitServe's queues pickle it) and is never validated or copied again.
Only export has no request body of its own, hence its small schema here.

A result carries its own HTTP status: in a LitServe batch, raising for one request would fail
every request of the batch, so a worker answers each job separately instead.

A worker streams: per decode step it sends, for each job of its batch, a JobEvent (new text of a
streaming generate job), the job's JobResult (exactly once, as soon as the job is done, so a short
job never waits for the longest of its batch) or None (nothing new: never sent to the HTTP side).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from serving.errors import error_body
from serving.schemas import AdapterCreateRequest, GenerateRequest


class ExportRequest(BaseModel):
    """GET /v1/adapters/{adapter_id}/peft when the archive is not on disk yet."""

    adapter_id: str


Job = AdapterCreateRequest | GenerateRequest | ExportRequest


@dataclass(frozen=True)
class JobEvent:
    """Partial output of a streaming generate job: the text each output row gained since the job's
    previous event ("" for a row with nothing new), in the order of the job's outputs."""

    deltas: list[str]


@dataclass(frozen=True)
class JobResult:
    status: int
    body: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status < 400

    @classmethod
    def error(cls, status: int, message: str) -> JobResult:
        return cls(status, error_body(status, message))


Step = list[JobEvent | JobResult | None]
"""What a worker sends per decode step: one item per job of its batch, in order."""
