"""TagiModel: a frozen T5, its instruction encoder, the adapter generator, and fusion.

An instruction is encoded once by the frozen instruction encoder (hypernet.encoders: the base
model's own encoder with no adapter attached, or a sentence encoder) and turned into a LoRA
adapter by the generator, which reads its token states and their mean. Inputs then run through
the base with that adapter attached per example, without the instruction in the input; with
fusion on, the decoder also attends to the instruction's token states (in the base's width).
Only the generator is trainable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from hypernet.batching import AdapterBatcher, stack_adapters
from hypernet.config import DEFAULT_MAX_NEW_TOKENS, CheckpointConfig
from hypernet.decoding import GREEDY, RowUpdate, Sampling, Stepper, T5Stepper, decode, stop_ids
from hypernet.encoders import InstructionEncoder, base_encoder
from hypernet.errors import EmptyInstruction, InputTooLong, UserError
from hypernet.families import family_of
from hypernet.fusion import InstructionEncoding, concat_instructions, fuse, masked_mean
from hypernet.generator import AdapterGenerator
from hypernet.inject import Attachment, inject_lora
from hypernet.targets import LoraWeights, find_targets


@dataclass(frozen=True)
class Adapter:
    """A generated adapter. A pure function of (checkpoint, instruction): the same pair always
    gives bit-identical tensors and the same id, so any process can rebuild it."""

    adapter_id: str
    instruction: str
    weights: LoraWeights  # batch of one
    instruction_encoding: InstructionEncoding  # batch of one, unpadded, in the base width: what fusion attends to
    model: TagiModel = field(repr=False, compare=False)
    """The model that generated it: its layout and config say how to export it."""

    @property
    def nbytes(self) -> int:
        return self.weights.nbytes + self.instruction_encoding.nbytes

    def save_peft(self, out_dir: str | Path, overwrite: bool = False) -> None:
        """Write a standard PEFT LoRA directory (what `tagi adapter` writes)."""
        from hypernet.io import export_peft  # io imports this module

        export_peft(self, Path(out_dir), overwrite=overwrite)


ADAPTER_CHUNK = 8
"""Instructions per encoder and generator pass when making adapters. A matmul's rounding
depends on its shapes (a CPU BLAS or cuBLAS picks its kernel and blocking by shape), so an
adapter is computed in a pass whose shapes depend only on its own token length: instructions
of one length, unpadded, ADAPTER_CHUNK rows (a short chunk is filled with repeats). Rows of a
pass never mix, so the same instruction gives bit-identical tensors whatever it is batched with."""


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
        instruction_encoder: InstructionEncoder | None = None,
    ) -> None:
        super().__init__()
        base.requires_grad_(False)
        base.eval()
        self.base = base
        self.tokenizer = tokenizer
        self.config = config
        self.family = family_of(base)
        layer, layers = config.instruction_encoder.layer, base.config.num_hidden_layers
        if layer is not None and not self.family.causal:
            raise UserError("an instruction encoder layer applies to a decoder-only base (a T5 reads its encoder's output)")
        if layer is not None and not -layers - 1 <= layer <= layers:
            raise UserError(f"instruction encoder layer {layer} does not exist: this base has hidden states 0..{layers}")
        self.instruction_encoder = instruction_encoder or base_encoder(base, tokenizer)
        """Frozen; reads instructions in its own tokenizer (`instruction_tokenizer`)."""
        self.layout = find_targets(base, config.generator.target_modules)
        self.generator = generator or AdapterGenerator(
            self.layout,
            base.config.hidden_size,
            config.generator,
            self.instruction_encoder.width,
            project_fusion=self.projects_fusion,
        )
        self.slots = inject_lora(base, self.layout)
        self.fingerprint = fingerprint
        """Checkpoint fingerprint (base + generator + config); adapter ids derive from it."""

    @property
    def projects_fusion(self) -> bool:
        """Whether fusion attends to a trained projection of the instruction's states (an external
        encoder speaks another space than the decoder's cross-attention)."""
        return self.config.instruction_encoder.kind != "base"

    def train(self, mode: bool = True) -> TagiModel:
        # The base stays in eval mode (no dropout on the frozen path); only the generator trains.
        self.training = mode
        self.generator.train(mode)
        return self

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute the base's layer activations in the backward pass instead of storing them while
        the generator trains (memory for a big base; the same result).

        A recomputation runs after forward's `slots.attached` block has exited, so each checkpoint
        re-attaches the factors it first ran with (torch's context_fn, non-reentrant checkpoints
        only). The base stays in eval mode (no dropout) and transformers only checkpoints a layer
        whose own `training` flag is set: that flag alone is set on each layer (its dropout modules
        keep theirs). Without grad (generation) nothing changes."""
        from transformers.modeling_layers import GradientCheckpointingLayer

        kwargs = {**(activation_checkpointing_kwargs or {}), "use_reentrant": False, "context_fn": self.slots.checkpoint_contexts}
        self.base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        for layer in self.base.modules():
            if isinstance(layer, GradientCheckpointingLayer):
                layer.training = True

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def instruction_tokenizer(self) -> PreTrainedTokenizerBase:
        return self.instruction_encoder.tokenizer

    # ---- text -> tensors -------------------------------------------------------------------

    def tokenize(
        self, texts: list[str], max_tokens: int, what: str, tokenizer: PreTrainedTokenizerBase | None = None
    ) -> dict[str, torch.Tensor]:
        """Pad a batch; refuse (InputTooLong) rather than silently truncate a text."""
        batch = (tokenizer or self.tokenizer)(texts, padding=True, return_tensors="pt")
        lengths = batch["attention_mask"].sum(dim=1)
        if int(lengths.max()) > max_tokens:
            i = int(lengths.argmax())
            raise InputTooLong(f"{what} {i} is {int(lengths[i])} tokens; the limit is {max_tokens}")
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def format_inputs(self, inputs: list[str]) -> list[str]:
        return [self.config.input_template.replace("{input}", text) for text in inputs]

    def format_instruction(self, instruction: str) -> str:
        """The instruction in the form the generator was trained on (the checkpoint's one
        `instruction_template`, e.g. "Definition: {instruction}"). Empty text is refused here,
        before the template would make it look non-empty."""
        if not instruction.strip():
            raise EmptyInstruction("instruction is empty")
        return self.config.format_instruction(instruction)

    # ---- instruction -> adapter ------------------------------------------------------------

    @torch.no_grad()
    def encode_instruction_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> InstructionEncoding:
        """Token ids (of `instruction_tokenizer`) of formatted instructions -> their encoding; every
        path to an adapter (users, training stages, the benchmark) goes through here. The encoder
        is frozen, so there is no graph to keep."""
        states = self.instruction_encoder(input_ids, attention_mask).to(self.base.dtype)
        return InstructionEncoding(states, attention_mask, masked_mean(states, attention_mask))

    def encode_instructions(self, instructions: list[str]) -> InstructionEncoding:
        """Bare instructions -> encoding (the template is applied here)."""
        texts = [self.format_instruction(text) for text in instructions]
        batch = self.tokenize(texts, self.config.max_instruction_tokens, "instruction", self.instruction_tokenizer)
        return self.encode_instruction_ids(batch["input_ids"], batch["attention_mask"])

    def generate_lora(self, encoding: InstructionEncoding) -> LoraWeights:
        return self.generator(encoding)

    def fusion_states(self, encoding: InstructionEncoding) -> InstructionEncoding:
        """The encoding in the base width, as the decoder attends to it with fusion."""
        return self.generator.fusion_states(encoding)

    def instruction_ids(self, instruction: str) -> list[int]:
        """Token ids of one bare instruction in its trained form; refuses an empty one or one over
        the limit, so a batch can report each bad instruction before generating anything."""
        ids = self.instruction_tokenizer(self.format_instruction(instruction))["input_ids"]
        if len(ids) > self.config.max_instruction_tokens:
            raise InputTooLong(f"instruction is {len(ids)} tokens; the limit is {self.config.max_instruction_tokens}")
        return ids

    def adapter(self, instruction: str) -> Adapter:
        """The adapter of one bare instruction (the same tensors `adapters` gives it in any batch).
        The id is computed from the text as given."""
        return self.adapters([instruction])[0]

    @torch.no_grad()
    def adapters(self, instructions: list[str]) -> list[Adapter]:
        """Adapters of many bare instructions, one encoder and generator pass per ADAPTER_CHUNK
        instructions of equal token length (see ADAPTER_CHUNK for why not one padded batch)."""
        ids = [self.instruction_ids(text) for text in instructions]
        by_length: dict[int, list[int]] = {}
        for i, row in enumerate(ids):
            by_length.setdefault(len(row), []).append(i)
        result: dict[int, Adapter] = {}
        for rows in by_length.values():
            for start in range(0, len(rows), ADAPTER_CHUNK):
                chunk = rows[start : start + ADAPTER_CHUNK]
                filled = chunk + [chunk[0]] * (ADAPTER_CHUNK - len(chunk))
                input_ids = torch.tensor([ids[i] for i in filled], device=self.device)
                encoding = self.encode_instruction_ids(input_ids, torch.ones_like(input_ids))
                weights, fusion = self.generate_lora(encoding), self.fusion_states(encoding)
                for j, i in enumerate(chunk):
                    text = instructions[i]
                    result[i] = Adapter(adapter_id(self.fingerprint, text), text, weights.select([j]), fusion.select([j]), self)
        return [result[i] for i in range(len(instructions))]

    # ---- running the adapted model --------------------------------------------------------

    def encode_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, instruction: InstructionEncoding | None
    ) -> tuple[BaseModelOutput, torch.Tensor]:
        """Encoder pass with the attached adapter, then fusion: what the decoder attends to and its mask."""
        encoded = self.base.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        encoded, memory_mask = fuse(encoded, attention_mask, instruction)
        return BaseModelOutput(last_hidden_state=encoded), memory_mask

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
            memory, memory_mask = self.encode_inputs(input_ids, attention_mask, instruction)
            out = self.base(encoder_outputs=memory, attention_mask=memory_mask, decoder_input_ids=decoder_input_ids)
        return out.logits

    def generate(
        self,
        inputs: list[str],
        adapters: Adapter | None | list[Adapter | None],
        fusion: bool | list[bool] | None = None,
        max_new_tokens: int | list[int] | None = None,
        sampling: Sampling | list[Sampling] | None = None,
        workspace: AdapterBatcher | None = None,
    ) -> list[str]:
        """Outputs (greedy by default); the texts `generate_stream` streams, collected."""
        texts = [""] * len(inputs)
        for updates in self.generate_stream(inputs, adapters, fusion, max_new_tokens, sampling, workspace):
            for update in updates:
                texts[update.row] += update.delta
        return texts

    @torch.no_grad()
    def generate_stream(
        self,
        inputs: list[str],
        adapters: Adapter | None | list[Adapter | None],
        fusion: bool | list[bool] | None = None,
        max_new_tokens: int | list[int] | None = None,
        sampling: Sampling | list[Sampling] | None = None,
        workspace: AdapterBatcher | None = None,
    ) -> Iterator[list[RowUpdate]]:
        """Decode step by step; input i runs with adapters[i] (None: the plain base), all in one
        batch. One adapter (or None), one fusion flag, one limit or one Sampling applies to every
        input; a list gives one per row, so requests with different settings still share each
        forward pass. Each step yields the rows with news (hypernet.decoding.decode).

        Inputs are checked and encoded here, before the first step, so a bad input (InputTooLong)
        raises at the call. `workspace` is a caller-owned AdapterBatcher (a server reuses one
        across batches instead of allocating); it must not be reassembled until the stream ends."""
        n = len(inputs)
        rows = list(adapters) if isinstance(adapters, list) else [adapters] * n
        fusion = self.config.fusion if fusion is None else fusion
        fusions = [fusion] * n if isinstance(fusion, bool) else list(fusion)
        max_new_tokens = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
        limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        sampling = GREEDY if sampling is None else sampling
        samplings = [sampling] * n if isinstance(sampling, Sampling) else list(sampling)
        if len(rows) != n:
            raise ValueError(f"{n} inputs but {len(rows)} adapters")
        if len(fusions) != n or len(limits) != n or len(samplings) != n:
            raise ValueError("per-row fusion, max_new_tokens and sampling need one value per input")
        if min(limits, default=1) < 1:
            raise ValueError("max_new_tokens must be >= 1")
        batch = self.tokenize(self.format_inputs(inputs), self.config.max_input_tokens, "input")
        weights = [a.weights if a else None for a in rows]
        lora = None if not any(rows) else workspace.assemble(weights) if workspace else stack_adapters(weights)
        instruction = concat_instructions([a.instruction_encoding if a and f else None for a, f in zip(rows, fusions)])
        attachment = self.slots.prepare(lora)  # once for the prompt pass and every decode step
        stepper = self.stepper(batch["input_ids"], batch["attention_mask"], instruction, attachment)
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
        return decode(stepper, self.tokenizer, *stop_ids(self.base, self.tokenizer), prompt_tokens, limits, samplings)

    def stepper(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        instruction: InstructionEncoding | None,
        attachment: Attachment | None,
    ) -> Stepper:
        """The decode loop's model side for a batch of tokenized inputs (the encoder runs here, once)."""
        with self.slots.attached(attachment):
            memory, memory_mask = self.encode_inputs(input_ids, attention_mask, instruction)
        return T5Stepper(self.base, self.slots, memory.last_hidden_state, memory_mask, attachment)

    def new_workspace(self) -> AdapterBatcher:
        """An AdapterBatcher matching this model's layout, dtype and device, for `generate(workspace=)`."""
        weight = self.slots.layers[0].weight
        generator = self.config.generator
        return AdapterBatcher(self.layout, generator.rank, generator.scale, weight.dtype, weight.device)

    @torch.no_grad()
    def generate_tokens(
        self,
        batch: dict[str, torch.Tensor],
        lora: LoraWeights | None,
        instruction: InstructionEncoding | None,
        max_new_tokens: int,
    ) -> torch.Tensor:
        """Greedy token ids (b, 1 + new tokens), starting with the decoder start token, by
        `transformers`' own `generate` (the reference `generate_stream` is tested against)."""
        with self.slots.attached(lora):
            memory, memory_mask = self.encode_inputs(batch["input_ids"], batch["attention_mask"], instruction)
            return self.base.generate(
                encoder_outputs=memory,
                attention_mask=memory_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
            )

    def parameter_counts(self) -> dict[str, int]:
        """Trainable generator (with fusion's projection when the encoder is external; fusion
        otherwise reuses the frozen cross-attention), frozen base, and a separate frozen
        instruction encoder (0 when it is the base's own)."""
        base = {id(p) for p in self.base.parameters()}
        projection = self.generator.fusion_projection
        return {
            "generator": sum(p.numel() for p in self.generator.parameters()),
            "fusion_projection": sum(p.numel() for p in projection.parameters()) if projection is not None else 0,
            "base_frozen": sum(p.numel() for p in self.base.parameters()),
            "instruction_encoder_frozen": sum(p.numel() for p in self.instruction_encoder.parameters() if id(p) not in base),
        }
