"""CausalTagiModel: TAGI on a decoder-only base (Llama, Mistral, Qwen2/Qwen3, GPT-2).

Everything between an instruction and its adapter is TagiModel's: the same instruction encoder
interface, generator and adapter ids. What a decoder changes is how an input runs:
- the prompt (the checkpoint's `input_template`, often the base's chat template) and the answer
  are one sequence; training scores the answer tokens only (`forward` returns the logits that
  predict them, aligned with the labels exactly as T5's decoder logits are, so every training
  stage's loss code is shared);
- fusion is a prefix (hypernet.fusion.PrefixKV): the instruction's key/value states of every
  layer, computed once per adapter by the frozen base with no adapter, which the prompt attends
  to as if the instruction preceded it;
- decoding is the shared loop (hypernet.decoding) driven by `CausalStepper`: one prompt pass
  with left-aligned rows, then one token per step with the key/value cache, every row with its
  own adapter or none.
The base's own instruction encoder is its transformer: one pass over an instruction gives the
token states the generator reads (of the configured layer) and the prefix.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache

from hypernet.decoding import Stepper, keep_rows, stop_ids
from hypernet.errors import UserError
from hypernet.fusion import InstructionEncoding, PrefixKV, masked_mean
from hypernet.inject import Attachment, LoraSlots
from hypernet.model import TagiModel
from hypernet.targets import LoraWeights


def left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rows with their padding moved to the left, so every prompt ends at the last
    column and the next token follows it directly (tokens keep their order)."""
    order = torch.argsort(attention_mask, dim=1, stable=True)
    return input_ids.gather(1, order), attention_mask.gather(1, order)


class PromptPass:
    """The sequences of a batch as the decoder sees them: an optional instruction prefix (in the
    key/value cache), then the tokens; positions count real tokens only, continuing after the
    row's instruction. With `cache` the pass keeps every token's keys and values for the next step."""

    def __init__(self, base: PreTrainedModel, instruction: InstructionEncoding | None, mask: torch.Tensor, cache: bool) -> None:
        self.cache = DynamicCache(config=base.config) if cache or instruction is not None else None
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        self.mask = mask
        if instruction is not None:
            if instruction.prefix is None:
                raise UserError("fusion needs the instruction's prefix, which only the base's own instruction encoder gives")
            dtype = base.dtype
            for layer, (keys, values) in enumerate(zip(instruction.prefix.keys, instruction.prefix.values)):
                self.cache.update(keys.to(dtype), values.to(dtype), layer)
            positions = positions + instruction.mask.sum(dim=1, keepdim=True)
            self.mask = torch.cat([instruction.mask.to(mask.dtype), mask], dim=1)
        self.positions = positions
        self.next_position = positions[:, -1] + 1

    def append(self) -> None:
        """One more token per row."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        self.positions = self.next_position[:, None]
        self.next_position = self.next_position + 1

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask, self.positions, self.next_position = self.mask[rows], self.positions[rows], self.next_position[rows]


def answer_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    decoder_input_ids: torch.Tensor,
    instruction: InstructionEncoding | None = None,
) -> torch.Tensor:
    """Logits (b, t, vocab) of a decoder-only model (a base, a PEFT model around one) in the
    convention of T5's decoder, so training's losses are shared: logits[:, t] predicts labels[:, t].
    input_ids are the prompts (any padding), decoder_input_ids the labels shifted right (its first
    column, a decoder start, has no meaning here). The prompt (left-aligned), then the answer, are
    one sequence; the logit at the prompt's last token predicts the first answer token, and no
    logit of a prompt position is returned, so a loss over them never scores the prompt."""
    prompt, prompt_mask = left_align(input_ids, attention_mask)
    answer = decoder_input_ids[:, 1:]
    ids = torch.cat([prompt, answer], dim=1)
    mask = torch.cat([prompt_mask, torch.ones_like(answer, dtype=prompt_mask.dtype)], dim=1)
    sequence = PromptPass(model, instruction, mask, cache=False)
    out = model(input_ids=ids, attention_mask=sequence.mask, position_ids=sequence.positions, cache=sequence.cache)
    return out.logits[:, prompt.shape[1] - 1 :]


class CausalStepper:
    """The decode loop's model side for a decoder-only base (see hypernet.decoding.Stepper)."""

    def __init__(
        self,
        base: PreTrainedModel,
        slots: LoraSlots,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        instruction: InstructionEncoding | None,
        attachment: Attachment | None,
    ) -> None:
        self.base, self.slots, self.attachment = base, slots, attachment
        self.input_ids, self.attention_mask = left_align(input_ids, attention_mask)
        self.sequence = PromptPass(base, instruction, self.attention_mask, cache=True)
        self.device = input_ids.device

    def logits(self, tokens: torch.Tensor | None) -> torch.Tensor:
        if tokens is None:
            step = self.input_ids
        else:
            self.sequence.append()
            step = tokens[:, None]
        with self.slots.attached(self.attachment):
            out = self.base(
                input_ids=step,
                attention_mask=self.sequence.mask,
                position_ids=self.sequence.positions,
                cache=self.sequence.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1, :]

    def keep(self, positions: torch.Tensor) -> None:
        self.sequence.keep(positions)
        self.attachment = keep_rows(self.slots, self.attachment, positions)


class CausalTagiModel(TagiModel):
    """A TagiModel whose base is a decoder-only causal LM (hypernet.families)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.fusion and self.config.instruction_encoder.kind != "base":
            raise UserError(
                "on a decoder-only base fusion is the instruction's prefix, which only the base's own instruction "
                "encoder computes: use the base encoder or a config with fusion off"
            )

    @property
    def projects_fusion(self) -> bool:
        return False  # fusion is the base's own key/value states: nothing to project

    @torch.no_grad()
    def encode_instruction_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> InstructionEncoding:
        """With the base's own encoder, one pass over the (right-padded) instructions gives the
        generator's token states (the configured layer) and fusion's prefix; with a sentence
        encoder there is no prefix (fusion is refused)."""
        config = self.config.instruction_encoder
        if config.kind != "base":
            return super().encode_instruction_ids(input_ids, attention_mask)
        cache = DynamicCache(config=self.base.config)
        out = self.base.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=True,
            output_hidden_states=config.layer is not None,
        )
        states = (out.last_hidden_state if config.layer is None else out.hidden_states[config.layer]).to(self.base.dtype)
        prefix = PrefixKV(tuple(layer.keys for layer in cache.layers), tuple(layer.values for layer in cache.layers))
        return InstructionEncoding(states, attention_mask, masked_mean(states, attention_mask), prefix)

    def fusion_states(self, encoding: InstructionEncoding) -> InstructionEncoding:
        return encoding

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        lora: LoraWeights | None = None,
        instruction: InstructionEncoding | None = None,
    ) -> torch.Tensor:
        """Logits (b, t, vocab) that predict the labels, as T5's forward (see `answer_logits`)."""
        with self.slots.attached(lora):
            return answer_logits(self.base, input_ids, attention_mask, decoder_input_ids, instruction)

    def stepper(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        instruction: InstructionEncoding | None,
        attachment: Attachment | None,
    ) -> Stepper:
        return CausalStepper(self.base, self.slots, input_ids, attention_mask, instruction, attachment)

    @torch.no_grad()
    def generate_tokens(
        self,
        batch: dict[str, torch.Tensor],
        lora: LoraWeights | None,
        instruction: InstructionEncoding | None,
        max_new_tokens: int,
    ) -> torch.Tensor:
        """Greedy token ids (b, new tokens; the pad id after a row's EOS), by the same stepper the
        stream uses (transformers' generate cannot attend to a per-row prefix)."""
        eos, pad = stop_ids(self.base, self.tokenizer)
        stepper = self.stepper(batch["input_ids"], batch["attention_mask"], instruction, self.slots.prepare(lora))
        done = torch.zeros(batch["input_ids"].shape[0], dtype=torch.bool, device=self.device)
        columns, tokens = [], None
        for _ in range(max_new_tokens):
            tokens = stepper.logits(tokens).argmax(dim=-1)
            tokens = torch.where(done, pad, tokens)
            columns.append(tokens)
            done |= torch.isin(tokens, torch.tensor(eos, device=self.device))
            if bool(done.all()):
                break
        return torch.stack(columns, dim=1)
