"""The messages between the HTTP processes and the inference workers.

Every operation that needs the model (create an adapter, generate, export a PEFT archive)
is a job on ONE LitServe queue, so that generate requests from /v1/generate and
/v1/chat/completions, whatever their instructions, land in the same dynamic batch. Jobs and
results cross process boundaries as plain dicts (pickled by LitServe's queues).

A result carries its own HTTP status: in a LitServe batch, raising for one request would
fail every request of the batch, so a worker answers each job separately instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from serving.errors import error_body


class CreateJob(BaseModel):
    op: Literal["create"] = "create"
    instruction: str


class GenerateJob(BaseModel):
    """`instruction` or `adapter_id` picks the adapter; neither means the plain base model."""

    op: Literal["generate"] = "generate"
    instruction: str | None = None
    adapter_id: str | None = None
    inputs: list[str]
    max_new_tokens: int
    fusion: bool | None = None


class ExportJob(BaseModel):
    op: Literal["export"] = "export"
    adapter_id: str


AnyJob = CreateJob | GenerateJob | ExportJob
_JOB = TypeAdapter(Annotated[AnyJob, Field(discriminator="op")])


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

    def to_dict(self) -> dict:
        return {"status": self.status, "body": self.body}

    @classmethod
    def from_dict(cls, data: dict) -> JobResult:
        return cls(int(data["status"]), dict(data["body"]))


def parse_job(payload: object) -> AnyJob | JobResult:
    """A job, or a 400 result for a payload no route would have sent (never an exception)."""
    try:
        return _JOB.validate_python(payload)
    except ValidationError as err:
        return JobResult.error(400, f"malformed job: {err.errors()[0].get('msg', 'invalid')}")
