"""Request and response bodies of the HTTP API, and the limits they enforce.

Everything a client can get wrong without the model (types, missing fields, counts, ranges)
is rejected here, in the HTTP process, before a request reaches an inference worker: a bad
request then never costs a model call and never shares a batch with good ones. What needs the
tokenizer (token limits) or the registry (unknown adapter ids) is checked by the worker; an
input over the token limit makes its batch retry request by request (serving.service).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from hypernet.config import DEFAULT_MAX_NEW_TOKENS

MAX_INPUTS = 32
"""Inputs per /v1/generate request; a batch of max_batch_size requests is at most this many rows each."""
MAX_NEW_TOKENS = 256
MAX_BATCH_INSTRUCTIONS = 64
"""Instructions per POST /v1/adapters list."""
ONE_ADAPTER = "give exactly one of instruction and adapter_id"
BASE_MODEL_ID = "tagi-base"
"""The OpenAI `model` name of the base model; any other name must be an adapter id."""

NewTokens = Annotated[StrictInt, Field(ge=1, le=MAX_NEW_TOKENS, description=f"output length limit, 1..{MAX_NEW_TOKENS} tokens")]


def _non_empty(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must not be empty")
    return value


class _Body(BaseModel):
    """Unknown fields are errors: a misspelt `max_new_token` must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


# ---- adapters ------------------------------------------------------------------------------


class AdapterCreateRequest(_Body):
    """One instruction, or a list of them: a list is ONE job, so a worker generates its new
    adapters in one pass (TagiModel.adapters) and the answer lists them in order."""

    instruction: StrictStr | None = Field(None, description="the task instruction the adapter is generated from")
    instructions: list[StrictStr] | None = Field(
        None, min_length=1, max_length=MAX_BATCH_INSTRUCTIONS, description=f"or 1..{MAX_BATCH_INSTRUCTIONS} instructions"
    )

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, value: str | None) -> str | None:
        return _non_empty(value)

    @field_validator("instructions")
    @classmethod
    def _instructions(cls, values: list[str] | None) -> list[str] | None:
        for i, value in enumerate(values or []):
            if not value.strip():
                raise ValueError(f"instruction {i} is empty")
        return values

    @model_validator(mode="after")
    def _one_of(self) -> AdapterCreateRequest:
        if (self.instruction is None) == (self.instructions is None):
            raise ValueError("give exactly one of instruction and instructions")
        return self

    @property
    def texts(self) -> list[str]:
        return [self.instruction] if self.instructions is None else list(self.instructions)


class AdapterInfo(BaseModel):
    """What the registry keeps about an adapter; its weights are rebuilt from the instruction."""

    adapter_id: str
    instruction: str
    rank: int
    target_modules: list[str]
    num_parameters: int
    created_at: float = Field(description="unix time of first creation")


class AdapterCreated(BaseModel):
    adapter_id: str
    rank: int
    target_modules: list[str]
    num_parameters: int
    cached: bool = Field(description="true when the serving worker already held the adapter in memory")
    generation_ms: float = Field(description="time spent generating the adapter (0 when cached)")


class AdapterBatchCreated(BaseModel):
    """The answer to POST /v1/adapters with `instructions`: one entry per instruction, in order."""

    adapters: list[AdapterCreated]


class AdapterList(BaseModel):
    adapters: list[AdapterInfo]


class AdapterDeleted(BaseModel):
    adapter_id: str
    deleted: bool = True


# ---- generate ------------------------------------------------------------------------------


class GenerateRequest(_Body):
    """What /v1/generate takes, and the one generate job every route puts on the workers' queue
    (a chat completion becomes one). Neither `instruction` nor `adapter_id` means the plain base
    model, which only the chat endpoint offers (model 'tagi-base' without a system message)."""

    instruction: StrictStr | None = Field(None, description="task instruction; give this or adapter_id")
    adapter_id: StrictStr | None = Field(None, description="id returned by POST /v1/adapters; give this or instruction")
    inputs: list[StrictStr] = Field(min_length=1, max_length=MAX_INPUTS, description=f"1..{MAX_INPUTS} inputs")
    max_new_tokens: NewTokens = DEFAULT_MAX_NEW_TOKENS
    fusion: StrictBool | None = Field(None, description="instruction fusion; default: the checkpoint's setting")

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, value: str | None) -> str | None:
        return _non_empty(value)

    @model_validator(mode="after")
    def _at_most_one_adapter(self) -> GenerateRequest:
        if self.instruction is not None and self.adapter_id is not None:
            raise ValueError(ONE_ADAPTER)
        return self


class GenerateResponse(BaseModel):
    adapter_id: str
    outputs: list[str]


# ---- OpenAI-compatible chat ----------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(BaseModel):
    """The OpenAI fields tagi honours; other OpenAI fields (temperature, top_p, seed...) are
    accepted and ignored because decoding is always greedy."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: NewTokens | None = None
    max_completion_tokens: NewTokens | None = None
    n: Literal[1] = 1
    stream: StrictBool = False
    fusion: StrictBool | None = Field(
        None, description="tagi extension (openai client: extra_body={'fusion': False}); default: the checkpoint's"
    )

    @property
    def max_new_tokens(self) -> int:
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_NEW_TOKENS

    def instruction_and_input(self) -> tuple[str | None, str]:
        """System (or developer) message -> instruction, the one user message -> input.

        tagi answers a task, not a conversation, so earlier turns would be silently dropped:
        they are refused instead."""
        system = [m for m in self.messages if m.role in ("system", "developer")]
        user = [m for m in self.messages if m.role == "user"]
        other = [m.role for m in self.messages if m.role not in ("system", "developer", "user")]
        if other:
            raise ValueError(f"multi-turn chat is not supported: {other[0]} messages cannot be used")
        if len(system) > 1:
            raise ValueError("give at most one system message (the instruction)")
        if len(user) != 1:
            raise ValueError("give exactly one user message (the input)")
        instruction = system[0].text if system else None
        if instruction is not None and not instruction.strip():
            raise ValueError("the system message (instruction) is empty")
        return instruction, user[0].text


class ChatChoice(BaseModel):
    index: int = 0
    message: dict[str, str]
    finish_reason: Literal["stop"] = Field(
        "stop", description="always 'stop': the model returns text, not whether it hit max_tokens"
    )


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tagi"
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
