"""Request and response bodies of the HTTP API, and the limits they enforce.

Everything a client can get wrong without the model (types, missing fields, counts, ranges)
is rejected here, in the HTTP process, before a request reaches an inference worker: a bad
request then never costs a model call and never shares a batch with good ones. What needs the
tokenizer (token limits) or the registry (unknown adapter ids) is checked by the worker; an
input over the token limit makes its batch retry request by request (serving.service).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from hypernet.config import DEFAULT_MAX_NEW_TOKENS
from hypernet.rubric import MAX_RUBRIC_CHARS, with_rubric

MAX_INPUTS = 32
"""Inputs per /v1/generate request; a batch of max_batch_size requests is at most this many rows each."""
MAX_NEW_TOKENS = 256
MAX_BATCH_INSTRUCTIONS = 64
"""Instructions per POST /v1/adapters list."""
MAX_CHOICES = 8
"""`n`: samples per input."""
MAX_STOP_STRINGS = 4
MAX_REQUEST_TOKENS = MAX_INPUTS * MAX_NEW_TOKENS
"""Per-request budget of inputs x n x max_new_tokens: what one request may cost the batch it joins."""
ONE_ADAPTER = "give exactly one of instruction and adapter_id"
RUBRIC_WITHOUT_INSTRUCTION = "rubric goes with an instruction (an adapter id's adapter already has its rubric, or none)"
BASE_MODEL_ID = "tagi-base"
"""The OpenAI `model` name of the base model; any other name must be an adapter id."""


def _integral(value: object) -> object:
    """JSON has numbers, not ints: 3.0 is the integer 3 to JSON Schema (and to clients that send
    it), so it is one here too; strings and booleans stay errors."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


NewTokens = Annotated[
    StrictInt,
    Field(ge=1, le=MAX_NEW_TOKENS, description=f"output length limit, 1..{MAX_NEW_TOKENS} tokens"),
    BeforeValidator(_integral),  # after Field: pydantic documents constraints placed before a validator only
]


MAX_TEXT_CHARS = 16_384
"""Characters in any one text a client sends (instruction, input, message, stop string). Far above
every checkpoint's token limits (a token covers at least one character), so those limits (413)
stay the real bound; this one bounds what the HTTP process validates and a worker tokenizes."""
ADAPTER_ID_PATTERN = "^[0-9a-f]{32}$"
"""hypernet.model.adapter_id: the first 32 hex digits of a SHA-256."""
PAGE_SIZE = 100
"""Rows per page of GET /v1/adapters and /v1/models unless `limit` says otherwise (1..MAX_PAGE_SIZE)."""
MAX_PAGE_SIZE = 1000
MAX_MODEL_CHARS = 64
"""Chat `model`: 'tagi-base' or an adapter id; room for other clients' model names in the 404."""
NON_BLANK_PATTERN = r"[^\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
"""Matches a character that str.isspace() rejects: the JSON-schema form of `text.strip() != ""`
(spelled out, because `\\S` means different sets in Python, Rust and ECMA regexes)."""


def _valid_unicode(value: object) -> object:
    """JSON can carry lone UTF-16 surrogates ("\\ud800"): no text, they cannot be encoded, hashed into
    an id, tokenized or stored. Refused here, before any other check looks at the string."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            where = f"lone surrogate U+{ord(value[err.start]):04X} at character {err.start}"
            raise ValueError(f"must be valid Unicode, not a {where}") from None
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


Text = Annotated[StrictStr, BeforeValidator(_valid_unicode), Field(max_length=MAX_TEXT_CHARS)]
"""Every string a client sends is a Text or one of the types below: valid Unicode, bounded."""
NonBlankText = Annotated[
    Text, AfterValidator(_non_empty), Field(json_schema_extra={"minLength": 1, "pattern": NON_BLANK_PATTERN})
]
"""Instructions. The schema documents what _non_empty checks (the same set, tested); pydantic does
not enforce it itself, so a blank instruction gets _non_empty's clearer message."""
RubricText = Annotated[NonBlankText, Field(max_length=MAX_RUBRIC_CHARS)]
"""A rubric (CITING): what a good answer must satisfy, read by the generator with the instruction
(hypernet.rubric.with_rubric), so the adapter of instruction + rubric is another adapter, with its
own id. Schemas that take one describe it with RUBRIC."""
RUBRIC = (
    f"what a good answer must satisfy (up to {MAX_RUBRIC_CHARS} characters), read with the instruction: "
    "the adapter of instruction + rubric is another adapter, with its own id"
)
AdapterId = Annotated[
    StrictStr, Field(pattern=ADAPTER_ID_PATTERN, description="32 lowercase hex digits"), BeforeValidator(_valid_unicode)
]
ModelName = Annotated[Text, Field(min_length=1, max_length=MAX_MODEL_CHARS)]
StopText = Annotated[Text, Field(min_length=1)]


def _only_with(field: str, condition: dict) -> dict:
    """The JSON-schema form of "`field` (null counts as absent) only where `condition` holds"."""
    return {"anyOf": [{"not": {"required": [field]}}, {"properties": {field: {"type": "null"}}}, condition]}


RUBRIC_NEEDS_INSTRUCTION = _only_with(
    "rubric", {"required": ["instruction"], "properties": {"instruction": {"not": {"type": "null"}}}}
)


def _exactly_one_of(first: str, second: str) -> dict:
    """The JSON-schema form of "give exactly one of these two fields" (null counts as absent)."""
    given = [{"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in (first, second)]
    return {"oneOf": given}


class _Body(BaseModel):
    """Unknown fields are errors: a misspelt `max_new_token` must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


# ---- adapters ------------------------------------------------------------------------------


class AdapterCreateRequest(_Body):
    """One instruction, or a list of them: a list is ONE job, so a worker generates its new
    adapters in one pass (TagiModel.adapters) and the answer lists them in order."""

    model_config = ConfigDict(json_schema_extra=_exactly_one_of("instruction", "instructions"))

    instruction: NonBlankText | None = Field(None, description="the task instruction the adapter is generated from")
    instructions: list[NonBlankText] | None = Field(
        None, min_length=1, max_length=MAX_BATCH_INSTRUCTIONS, description=f"or 1..{MAX_BATCH_INSTRUCTIONS} instructions"
    )
    rubric: RubricText | None = Field(None, description=f"{RUBRIC} (with `instructions`: the rubric of each)")

    @model_validator(mode="after")
    def _one_of(self) -> AdapterCreateRequest:
        if (self.instruction is None) == (self.instructions is None):
            raise ValueError("give exactly one of instruction and instructions")
        return self

    @property
    def texts(self) -> list[str]:
        """The instructions as the generator reads them (with the rubric): what the adapter ids hash."""
        texts = [self.instruction] if self.instructions is None else list(self.instructions)
        return texts if self.rubric is None else [with_rubric(text, self.rubric) for text in texts]


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


class Page(BaseModel):
    """A page of a list endpoint, ordered by id: a walk that passes each `next` as `after` sees
    every row that exists throughout the walk exactly once, whatever is created or deleted."""

    has_more: bool = Field(description="true when rows follow this page")
    next: str | None = Field(description="pass as `after` for the next page; null on the last page")


class AdapterList(Page):
    adapters: list[AdapterInfo]


class AdapterDeleted(BaseModel):
    adapter_id: str
    deleted: bool = True


# ---- generate ------------------------------------------------------------------------------

FinishReason = Literal["stop", "length"]
"""OpenAI's meanings: "stop" = the model ended the text or a stop string cut it; "length" = max tokens reached."""


class Decoding(BaseModel):
    """How outputs are decoded, shared by /v1/generate and chat. Null means the default, as in
    OpenAI's API: greedy decoding, one output per input, no stop strings, no streaming."""

    temperature: Annotated[float, Field(ge=0, le=2, strict=True)] | None = Field(
        None, description="0..2; 0 (the default) decodes greedily, above 0 samples"
    )
    top_p: Annotated[float, Field(gt=0, le=1, strict=True)] | None = Field(
        None, description="nucleus sampling, (0, 1]; 1 (the default) keeps every token"
    )
    # JSON's exact integers (JavaScript's safe range): beyond it a client's number may not be the one it meant.
    seed: Annotated[StrictInt, Field(ge=-(2**53 - 1), le=2**53 - 1), BeforeValidator(_integral)] | None = Field(
        None, description="the same seed and settings give the same output, whatever the request shares a batch with"
    )
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP_STRINGS)] | None = Field(
        None, description=f"up to {MAX_STOP_STRINGS} non-empty strings; the output ends before the first one"
    )
    n: Annotated[StrictInt, Field(ge=1, le=MAX_CHOICES), BeforeValidator(_integral)] | None = Field(
        None, description=f"outputs per input, 1..{MAX_CHOICES}; choice i samples with seed + i"
    )
    stream: StrictBool = Field(False, description="send the text as it is decoded, as server-sent events")

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class GenerateRequest(_Body, Decoding):
    """What /v1/generate takes, and the one generate job every route puts on the workers' queue
    (a chat completion becomes one). Neither `instruction` nor `adapter_id` means the plain base
    model, which only the chat endpoint offers (model 'tagi-base' without a system message)."""

    model_config = ConfigDict(json_schema_extra={**_exactly_one_of("instruction", "adapter_id"), **RUBRIC_NEEDS_INSTRUCTION})

    instruction: NonBlankText | None = Field(None, description="task instruction; give this or adapter_id")
    adapter_id: AdapterId | None = Field(None, description="id returned by POST /v1/adapters; give this or instruction")
    rubric: RubricText | None = Field(None, description=f"{RUBRIC}; only with instruction")
    inputs: list[Text] = Field(min_length=1, max_length=MAX_INPUTS, description=f"1..{MAX_INPUTS} inputs")
    max_new_tokens: NewTokens = DEFAULT_MAX_NEW_TOKENS
    fusion: StrictBool | None = Field(None, description="instruction fusion; default: the checkpoint's setting")

    @model_validator(mode="after")
    def _at_most_one_adapter(self) -> GenerateRequest:
        if self.instruction is not None and self.adapter_id is not None:
            raise ValueError(ONE_ADAPTER)
        if self.rubric is not None and self.instruction is None:
            raise ValueError(RUBRIC_WITHOUT_INSTRUCTION)
        return self

    @property
    def adapter_instruction(self) -> str | None:
        """The instruction as the generator reads it (with the rubric): what the adapter id hashes."""
        if self.instruction is None or self.rubric is None:
            return self.instruction
        return with_rubric(self.instruction, self.rubric)

    @model_validator(mode="after")
    def _within_budget(self) -> GenerateRequest:
        cost = len(self.inputs) * self.choices * self.max_new_tokens
        if cost > MAX_REQUEST_TOKENS:
            raise ValueError(
                f"inputs x n x max_new_tokens = {len(self.inputs)} x {self.choices} x {self.max_new_tokens} = {cost} "
                f"is over the per-request budget of {MAX_REQUEST_TOKENS} tokens: split the request"
            )
        return self


class Usage(BaseModel):
    """Token counts, as OpenAI defines them: each input's tokens once (as the model reads them,
    template included; the instruction is the adapter, not prompt), every output's new tokens."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    """With n > 1, `outputs` and `finish_reasons` hold one list of n per input."""

    adapter_id: str
    outputs: list[str] | list[list[str]]
    finish_reasons: list[FinishReason] | list[list[FinishReason]]
    usage: Usage


def per_input(rows: list, n: int) -> list:
    """Rows (input-major: input 0's n choices first) as the API returns them: one value per
    input, or with n > 1 one list of n per input."""
    return rows if n == 1 else [rows[i : i + n] for i in range(0, len(rows), n)]


def by_row(values: list, n: int) -> list:
    """per_input undone: the flat list of rows."""
    return values if n == 1 else [value for group in values for value in group]


# ---- OpenAI-compatible chat ----------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    # The schema lists the roles tagi serves; the others are parsed only to refuse them by name.
    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(
        json_schema_extra={"enum": ["system", "developer", "user"]}
    )
    content: Text | list[TextPart]
    name: Text | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


_NON_BLANK_CONTENT = {
    "anyOf": [
        {"type": "string", "pattern": NON_BLANK_PATTERN},
        {
            "type": "array",
            "contains": {"type": "object", "required": ["text"], "properties": {"text": {"pattern": NON_BLANK_PATTERN}}},
        },
    ]
}
CHAT_MESSAGES_SCHEMA = {
    "maxItems": 2,
    "contains": {"properties": {"role": {"const": "user"}}},
    "minContains": 1,
    "maxContains": 1,
}
CHAT_SCHEMA = {
    "anyOf": [
        {"properties": {"messages": {"maxItems": 1}}},
        {
            "properties": {
                "model": {"const": BASE_MODEL_ID},
                "messages": {
                    "items": {
                        "anyOf": [{"properties": {"role": {"const": "user"}}}, {"properties": {"content": _NON_BLANK_CONTENT}}]
                    }
                },
            }
        },
    ],
}
"""What instruction_and_input() enforces, in JSON-schema terms (with CHAT_MESSAGES_SCHEMA): one user
message, at most one system (or developer) message, which is not blank and comes only with model 'tagi-base'."""
RUBRIC_NEEDS_SYSTEM = _only_with("rubric", {"properties": {"messages": {"minItems": 2}}})
"""A rubric goes with the instruction: two messages, which CHAT_MESSAGES_SCHEMA makes a system (or
developer) message and the user's."""


class StreamOptions(BaseModel):
    include_usage: StrictBool = Field(False, description="end the stream with a chunk that carries `usage`")


IGNORED_ONLY_WHEN_NEUTRAL = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "response_format": (None, {"type": "text"}),
}
"""OpenAI fields tagi cannot honour, each with the values that ask for nothing: any other value
is refused (422), because ignoring it would silently give the client something else."""


class ChatCompletionRequest(Decoding):
    """The OpenAI fields tagi honours. Other OpenAI fields (user, metadata, store...) are
    accepted and ignored, so that existing clients work unchanged, except those whose request
    tagi cannot fulfil (IGNORED_ONLY_WHEN_NEUTRAL), which are refused when set."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"allOf": [CHAT_SCHEMA, RUBRIC_NEEDS_SYSTEM]})

    model: ModelName
    messages: list[ChatMessage] = Field(min_length=1, json_schema_extra=CHAT_MESSAGES_SCHEMA)
    max_tokens: NewTokens | None = None
    max_completion_tokens: NewTokens | None = None
    stream_options: StreamOptions | None = None
    fusion: StrictBool | None = Field(
        None, description="tagi extension (openai client: extra_body={'fusion': False}); default: the checkpoint's"
    )
    rubric: RubricText | None = Field(None, description=f"tagi extension: {RUBRIC}; only with a system message (the instruction)")

    @model_validator(mode="after")
    def _nothing_unfulfillable(self) -> ChatCompletionRequest:
        for name, value in (self.model_extra or {}).items():
            if name in IGNORED_ONLY_WHEN_NEUTRAL and value not in IGNORED_ONLY_WHEN_NEUTRAL[name]:
                raise ValueError(f"{name} is not supported by tagi (send it unset)")
        return self

    @property
    def max_new_tokens(self) -> int:
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_NEW_TOKENS

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

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
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tagi"
    parent: str | None = None


class ModelList(Page):
    """OpenAI's model list; 'tagi-base' first, then the adapters by id."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
