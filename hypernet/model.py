"""TagiModel: a frozen T5, its instruction encoder, the adapter generator, and fusion.

An instruction is encoded once by the base model's own encoder (no adapter attached), pooled,
and turned into a LoRA adapter by the generator. Inputs then run through the base with that
adapter attached per example, without the instruction in the input; with fusion on, the
decoder also attends to the instruction's token states. Only the generator is trainable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from hypernet.batching import AdapterBatcher
from hypernet.config import CheckpointConfig
from hypernet.fusion import InstructionEncoding, concat_instructions, fuse, masked_mean
from hypernet.generator import AdapterGenerator
from hypernet.inject import inject_lora
from hypernet.targets import LoraWeights, find_targets


class InputTooLong(ValueError):
    """A text exceeds the checkpoint's token limit; callers turn this into a user error."""


@dataclass(frozen=True)
class Adapter:
    """A generated adapter. A pure function of (checkpoint, instruction): the same pair always
    gives bit-identical tensors and the same id, so any process can rebuild it."""

    adapter_id: str
    instruction: str
    weights: LoraWeights  # batch of one
    instruction_encoding: InstructionEncoding  # batch of one, unpadded; used by fusion

    @property
    def nbytes(self) -> int:
        states = self.instruction_encoding.states
        return self.weights.nbytes + states.numel() * states.element_size()


def adapter_id(checkpoint_fingerprint: str, instruction: str) -> str:
    return hashlib.sha256(f"{checkpoint_fingerprint}\n{instruction}".encode()).hexdigest()[:32]


class TagiModel(nn.Module):
    def __init__(
        self,
        base: T5ForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        config: CheckpointConfig,
        generator: AdapterGenerator | None = None,
        fingerprint: str = "",
    ) -> None:
        super().__init__()
        base.requires_grad_(False)
        base.eval()
        self.base = base
        self.tokenizer = tokenizer
        self.config = config
        self.layout = find_targets(base, config.generator.target_modules)
        self.generator = generator or AdapterGenerator(self.layout, base.config.d_model, config.generator)
        self.slots = inject_lora(base, self.layout)
        self.fingerprint = fingerprint
        """Checkpoint fingerprint (base + generator + config); adapter ids derive from it."""
        self.batcher: AdapterBatcher | None = None

    def train(self, mode: bool = True) -> TagiModel:
        # The base stays in eval mode (no dropout on the frozen path); only the generator trains.
        self.training = mode
        self.generator.train(mode)
        return self

    @property
    def device(self) -> torch.device:
        return self.base.device

    # ---- text -> tensors -------------------------------------------------------------------

    def tokenize(self, texts: list[str], max_tokens: int, what: str) -> dict[str, torch.Tensor]:
        """Pad a batch; refuse (InputTooLong) rather than silently truncate a text."""
        batch = self.tokenizer(texts, padding=True, return_tensors="pt")
        lengths = batch["attention_mask"].sum(dim=1)
        if int(lengths.max()) > max_tokens:
            i = int(lengths.argmax())
            raise InputTooLong(f"{what} {i} is {int(lengths[i])} tokens; the limit is {max_tokens}")
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def format_inputs(self, inputs: list[str]) -> list[str]:
        return [self.config.input_template.replace("{input}", text) for text in inputs]

    # ---- instruction -> adapter ------------------------------------------------------------

    @torch.no_grad()
    def encode_instructions(self, instructions: list[str]) -> InstructionEncoding:
        """Encode with the frozen base encoder; nothing before the generator trains, so no graph."""
        if any(not text.strip() for text in instructions):
            raise ValueError("instruction is empty")
        batch = self.tokenize(instructions, self.config.max_instruction_tokens, "instruction")
        states = self.base.encoder(**batch).last_hidden_state
        return InstructionEncoding(states, batch["attention_mask"], masked_mean(states, batch["attention_mask"]))

    def generate_lora(self, encoding: InstructionEncoding) -> LoraWeights:
        return self.generator(encoding.pooled)

    @torch.no_grad()
    def make_adapter(self, instruction: str, formatted: bool = False) -> Adapter:
        """One instruction, encoded alone (no padding), so its tensors never depend on what it
        was batched with.

        The checkpoint's `instruction_template` (the wording its generator was trained on,
        e.g. "Definition: {instruction}") is applied first, so a user types just the task;
        `formatted=True` is for text already in that form (the trainer's and evaluator's SNI
        prompts). The id is always computed from `instruction` as given.
        """
        text = instruction if formatted else self.config.format_instruction(instruction)
        encoding = self.encode_instructions([text])
        weights = self.generate_lora(encoding)
        return Adapter(adapter_id(self.fingerprint, instruction), instruction, weights, encoding)

    # ---- running the adapted model --------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        lora: LoraWeights | None = None,
        instruction: InstructionEncoding | None = None,
    ) -> torch.Tensor:
        """Logits (b, t_dec, vocab). Row i runs with adapter row i of `lora`; with `instruction`
        given, the decoder also attends to its states (fusion)."""
        with self.slots.attached(lora):
            encoded = self.base.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            encoded, memory_mask = fuse(encoded, attention_mask, instruction)
            out = self.base(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                attention_mask=memory_mask,
                decoder_input_ids=decoder_input_ids,
            )
        return out.logits

    @torch.no_grad()
    def generate(
        self,
        inputs: list[str],
        adapters: list[Adapter | None],
        fusion: bool | list[bool] | None = None,
        max_new_tokens: int | list[int] = 64,
    ) -> list[str]:
        """Greedy outputs; input i runs with adapters[i] (None: the plain base), all in one batch.

        `fusion` and `max_new_tokens` may be given per row, so requests with different settings
        still share one forward pass; greedy decoding is prefix-stable, so cutting a row's
        tokens at its own limit gives exactly what generating it alone would."""
        n = len(inputs)
        if len(adapters) != n:
            raise ValueError(f"{n} inputs but {len(adapters)} adapters")
        fusion = self.config.fusion if fusion is None else fusion
        fusions = [fusion] * n if isinstance(fusion, bool) else list(fusion)
        limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(fusions) != n or len(limits) != n:
            raise ValueError("per-row fusion and max_new_tokens need one value per input")
        if min(limits, default=1) < 1:
            raise ValueError("max_new_tokens must be >= 1")
        batch = self.tokenize(self.format_inputs(inputs), self.config.max_input_tokens, "input")
        lora = self.batch_adapters(adapters)
        instruction = concat_instructions([a.instruction_encoding if a and f else None for a, f in zip(adapters, fusions)])
        tokens = self.generate_tokens(batch, lora, instruction, max(limits))
        # Column 0 is the decoder start token; row i keeps its own first limits[i] new tokens.
        return self.tokenizer.batch_decode([row[: 1 + limit] for row, limit in zip(tokens, limits)], skip_special_tokens=True)

    def batch_adapters(self, adapters: list[Adapter | None]) -> LoraWeights | None:
        """Per-row adapters as one batch (a view of a reused workspace; see AdapterBatcher)."""
        if not any(adapters):
            return None
        if self.batcher is None:
            weight = self.slots.layers[0].weight
            generator = self.config.generator
            self.batcher = AdapterBatcher(self.layout, generator.rank, generator.scale, weight.dtype, weight.device)
        return self.batcher.assemble([a.weights if a else None for a in adapters])

    @torch.no_grad()
    def generate_tokens(
        self,
        batch: dict[str, torch.Tensor],
        lora: LoraWeights | None,
        instruction: InstructionEncoding | None,
        max_new_tokens: int,
    ) -> torch.Tensor:
        """Greedy token ids (b, 1 + new tokens), starting with the decoder start token."""
        with self.slots.attached(lora):
            encoded = self.base.encoder(**batch).last_hidden_state
            encoded, memory_mask = fuse(encoded, batch["attention_mask"], instruction)
            return self.base.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                attention_mask=memory_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
            )

    def parameter_counts(self) -> dict[str, int]:
        """Trainable generator, fusion (none: fusion reuses the frozen cross-attention), frozen base."""
        return {
            "generator": sum(p.numel() for p in self.generator.parameters()),
            "fusion": 0,
            "base_frozen": sum(p.numel() for p in self.base.parameters()),
        }
