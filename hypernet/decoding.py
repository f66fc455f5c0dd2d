"""Step-wise decoding of a mixed batch: per-row adapters, sampling, stop strings, early finish.

`transformers`' `generate` returns when the whole batch is done and samples every row from one
random stream, so a server could neither stream text, nor give a row its own seed, nor answer
a short request before its long batch-mates. This loop drives the model itself, one token per
step with the key/value cache (a `Stepper`: T5's decoder here, a decoder-only model in
hypernet.causal), and reports after every step what each row added
(`RowUpdate`). Greedy rows pick the argmax, exactly as `generate(do_sample=False)` does, so
their tokens equal it; a row's choice reads only its own logits and its own random stream, so
a request gets the same tokens whatever it is batched with. No logits processors of the
checkpoint's generation_config are applied (tagi's bases set none; only its start, EOS and pad ids
are read).

Finished rows leave the batch once they are half of it (cache, memory and adapter rows are
index-selected): dropping a row at once would copy every surviving adapter row for each finished
one, while halving bounds the copies to about twice the batch's adapters in all.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, T5ForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from hypernet.inject import Attachment, LoraSlots

FinishReason = Literal["stop", "length"]
REPLACEMENT = "\ufffd"
"""What a tokenizer decodes an incomplete UTF-8 sequence to."""


@dataclass(frozen=True)
class Sampling:
    """How one row picks its tokens; the default is greedy."""

    temperature: float = 0.0
    """0: greedy (argmax, whatever top_p); > 0: sample from softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling: draw from the smallest set of most likely tokens whose mass reaches top_p."""
    seed: int | None = None
    """Same seed + same settings + same input and adapter -> same tokens, whatever the batch mates.
    None: a fresh random seed."""
    stop: tuple[str, ...] = ()
    """The text is cut before the first occurrence of any of these; the row then finishes ("stop")."""

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling()


@dataclass(frozen=True)
class RowUpdate:
    """What one decode step added to one row."""

    row: int
    delta: str
    """Text appended since the row's previous update (may be "")."""
    finish_reason: FinishReason | None
    """Set on the row's last update only: "stop" (EOS or a stop string) or "length" (max_new_tokens)."""
    prompt_tokens: int
    """The row's input tokens as the encoder reads them (template applied, EOS included); the
    instruction is not counted: it reaches the model as its adapter and fused states."""
    completion_tokens: int
    """Tokens generated so far for this row, an EOS included once generated (as OpenAI counts);
    the decoder start token is not generated and not counted."""


class RowText:
    """The text of one row as its tokens arrive, released only where it can no longer change.

    The row's text is always `tokenizer.decode(tokens, skip_special_tokens=True)`, decoded whole
    each step: decoding tokens one by one would lose SentencePiece's word-boundary spaces. What
    is released is a prefix of every later text, so the deltas add up to the final text exactly:
    a tail that could still become a stop string is held back, and so is the last word when the
    tokenizer's clean-up may still remove the space before it (" ." -> "."), and so is a
    character whose bytes have not all arrived."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.tokens: list[int] = []
        self.sent = ""
        self.stopped = False
        """A stop string was found; the text ends before it."""

    def add(self, token: int) -> str:
        """Append a token; return the newly releasable text (all of it up to a stop string once one appears)."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._release(text[:cut])
        end = len(text) - max((self._pending(text, s) for s in self.stop), default=0)
        # A byte-level tokenizer (GPT-2, Qwen2, Llama 3) may split a character over tokens: until
        # its last byte arrives the text ends in U+FFFD, which the next token replaces.
        end = min(end, len(text.rstrip(REPLACEMENT)))
        if self.tokenizer.clean_up_tokenization_spaces:
            end = min(end, max(text.rfind(" ", len(self.sent)), len(self.sent)))
        return self._release(text[:end])

    def finish(self) -> str:
        """The rest of the text, at the row's end."""
        return "" if self.stopped else self._release(self.tokenizer.decode(self.tokens, skip_special_tokens=True))

    def _release(self, text: str) -> str:
        if len(text) <= len(self.sent):
            return ""
        delta = text[len(self.sent) :]
        self.sent = text
        return delta

    @staticmethod
    def _pending(text: str, stop: str) -> int:
        """Length of the longest tail of `text` that is a proper start of `stop`."""
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                return n
        return 0


def pick_tokens(logits: torch.Tensor, samplings: list[Sampling], generators: list[torch.Generator | None]) -> torch.Tensor:
    """Next token per row: argmax for greedy rows; otherwise one uniform draw from the row's own
    generator, located in the row's cumulative nucleus distribution (inverse CDF), so a row's
    choice depends only on its logits and its own stream. logits: (b, vocab) float32."""
    tokens = logits.argmax(dim=-1)
    for i, (sampling, generator) in enumerate(zip(samplings, generators)):
        if sampling.greedy:
            continue
        # In float64 and shifted first: the top logit becomes 0 and a tiny temperature sends the
        # others to -inf (probability 0: greedy, the limit it tends to). In float32 a temperature
        # like 1e-300 rounds to 0 and 0 / 0 gives NaN.
        row = logits[i].double()
        probs = torch.softmax((row - row.max()) / sampling.temperature, dim=-1)
        sorted_probs, order = probs.sort(descending=True, stable=True)
        mass_before = sorted_probs.cumsum(0) - sorted_probs
        keep = mass_before < sampling.top_p  # a prefix
        keep[0] = True  # the most likely token stays even when top_p is below float32's resolution (5e-324)
        kept = sorted_probs[keep]
        cumulative = kept.cumsum(0)
        u = torch.rand((), generator=generator, device=logits.device, dtype=cumulative.dtype)
        k = torch.searchsorted(cumulative, (u * cumulative[-1]).reshape(1), right=True).clamp(max=len(kept) - 1)
        tokens[i] = order[k[0]]
    return tokens


class Stepper(Protocol):
    """One model's side of the decode loop: the next-token logits of every row still in the batch."""

    device: torch.device

    def logits(self, tokens: torch.Tensor | None) -> torch.Tensor:
        """(b, vocab) logits of the next token, after feeding each row's last token (b,) (None:
        the first step, from the prompt alone)."""
        ...

    def keep(self, positions: torch.Tensor) -> None:
        """Drop every row but those at `positions` (cache, memory, adapter rows)."""
        ...


class T5Stepper:
    """A T5 decoder over a fixed encoder memory, with the self-attention key/value cache.

    memory (b, s, d) and memory_mask (b, s): what the decoder attends to (encoder output, fused).
    Row i runs with adapter row i of `attachment` (LoraSlots.prepare, done once by the caller and
    again here only when rows leave, so a step's attach only sets references), attached around
    each forward only, so the shared model holds no adapter while the caller has control between
    steps."""

    def __init__(
        self,
        base: T5ForConditionalGeneration,
        slots: LoraSlots,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        attachment: Attachment | None,
    ) -> None:
        self.base, self.slots, self.memory, self.memory_mask, self.attachment = base, slots, memory, memory_mask, attachment
        self.device = memory.device
        self.cache = EncoderDecoderCache(DynamicCache(config=base.config), DynamicCache(config=base.config))

    def logits(self, tokens: torch.Tensor | None) -> torch.Tensor:
        if tokens is None:
            tokens = torch.full((self.memory.shape[0],), self.base.generation_config.decoder_start_token_id, device=self.device)
        with self.slots.attached(self.attachment):
            out = self.base(
                encoder_outputs=BaseModelOutput(last_hidden_state=self.memory),
                attention_mask=self.memory_mask,
                decoder_input_ids=tokens[:, None],
                cache=self.cache,
                use_cache=True,
            )
        return out.logits[:, -1, :]

    def keep(self, positions: torch.Tensor) -> None:
        self.cache.batch_select_indices(positions)
        self.memory, self.memory_mask = self.memory[positions], self.memory_mask[positions]
        self.attachment = keep_rows(self.slots, self.attachment, positions)


def keep_rows(slots: LoraSlots, attachment: Attachment | None, positions: torch.Tensor) -> Attachment | None:
    """The attachment of the rows at `positions` only."""
    return slots.prepare(attachment.weights.select(positions)) if attachment is not None else None


def stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], int]:
    """(EOS ids, the id fed to finished rows) of a model: its generation config's, else the tokenizer's."""
    config = model.generation_config
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    pad = next(
        p
        for p in (config.pad_token_id, tokenizer.pad_token_id, getattr(config, "decoder_start_token_id", None), 0)
        if p is not None
    )
    return (eos if isinstance(eos, list) else [eos]), pad


@torch.no_grad()  # on a generator function, torch sets the mode around each step only, not while the caller runs
def decode(
    stepper: Stepper,
    tokenizer: PreTrainedTokenizerBase,
    eos: list[int],
    pad: int,
    prompt_tokens: list[int],
    limits: list[int],
    samplings: list[Sampling],
) -> Iterator[list[RowUpdate]]:
    """The decode loop: one list of updates per step, rows with news only; every row gets
    exactly one update with finish_reason set, at the step it finishes. Weights that view an
    AdapterBatcher's workspace must not be reassembled before the stream ends."""
    device = stepper.device
    eos_ids = torch.tensor(eos, device=device)
    n = len(limits)
    generators = [_generator(s, device) for s in samplings]
    texts = [RowText(tokenizer, s.stop) for s in samplings]
    counts = [0] * n
    done = [False] * n
    rows = list(range(n))  # the original row at each batch position
    step_input = None
    while True:
        logits = stepper.logits(step_input).float()  # (b, vocab)
        tokens = pick_tokens(logits, [samplings[r] for r in rows], [generators[r] for r in rows])
        is_eos = torch.isin(tokens, eos_ids).tolist()
        updates = []
        for position, (row, token) in enumerate(zip(rows, tokens.tolist())):
            if done[row]:
                continue
            counts[row] += 1
            delta = texts[row].add(token)
            finish: FinishReason | None = None
            if is_eos[position] or texts[row].stopped:
                finish = "stop"
            elif counts[row] == limits[row]:
                finish = "length"
            if finish is not None:
                done[row] = True
                delta += texts[row].finish()
            if delta or finish is not None:
                updates.append(RowUpdate(row, delta, finish, prompt_tokens[row], counts[row]))
        yield updates
        finished = [done[r] for r in rows]
        if all(finished):
            return
        step_input = torch.where(torch.tensor(finished, device=tokens.device), pad, tokens)
        if 2 * sum(finished) >= len(rows):
            keep = torch.tensor([p for p, f in enumerate(finished) if not f], device=device)
            stepper.keep(keep)
            step_input = step_input[keep]
            rows = [rows[p] for p in keep.tolist()]


def _generator(sampling: Sampling, device: torch.device) -> torch.Generator | None:
    if sampling.greedy:
        return None
    seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
    return torch.Generator(device=device).manual_seed(seed)
