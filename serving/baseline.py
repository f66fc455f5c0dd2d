"""The swap-per-request baseline engine (`tagi serve --engine peft-swap`), for benchmarks.

This is how adapters are served without mixed batches: one PEFT model holds every adapter it
has seen, and each request runs alone after `set_adapter` selects its adapter. It plugs into
the same worker, queue, registry and HTTP routes as the real engine, so a benchmark compares
only the engines. PEFT has no instruction fusion, so neither does this engine, and it decodes
greedily with `transformers`' generate (one random stream per batch could not give each row
its own seed; a causal base's prompts are padded on the left, as that generate needs). It
streams a whole request at a time: each request is generated alone, so its result goes out as
soon as it is done, but its text arrives in one piece.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from peft import PeftModel

from hypernet.causal import left_align
from hypernet.decoding import RowUpdate, stop_ids
from hypernet.families import load_base
from hypernet.files import BASE_DIR
from hypernet.io import export_peft
from hypernet.model import Adapter, TagiModel
from serving.service import RowGroup


class SwapPerRequestEngine:
    supports_fusion = False
    supports_sampling = False
    default_fusion = False

    def __init__(self, model: TagiModel, checkpoint: Path) -> None:
        self.model = model
        self.base = load_base(Path(checkpoint) / BASE_DIR, model.family, dtype=model.base.dtype)
        self.peft: PeftModel | None = None

    def stream(self, groups: Sequence[RowGroup]) -> Iterator[list[RowUpdate]]:
        """One step per request, with each of its rows' whole text (rows numbered across groups)."""
        start = 0
        for group in groups:
            yield self._generate_one(group, start)
            start += len(group.inputs)

    @torch.no_grad()
    def _generate_one(self, group: RowGroup, first_row: int) -> list[RowUpdate]:
        tokenizer = self.model.tokenizer
        # The model's own tokenization, so the same input token limit applies (InputTooLong).
        batch = self.model.tokenize(self.model.format_inputs(group.inputs), self.model.config.max_input_tokens, "input")
        eos, pad = stop_ids(self.base, tokenizer)
        if self.model.family.causal:
            batch = dict(zip(("input_ids", "attention_mask"), left_align(batch["input_ids"], batch["attention_mask"])))
        kwargs = {"max_new_tokens": group.max_new_tokens, "do_sample": False, "num_beams": 1, "pad_token_id": pad}
        if group.adapter is None:
            tokens = self.base.generate(**batch, **kwargs) if self.peft is None else self._generate_plain(batch, kwargs)
        else:
            peft = self._load(group.adapter)
            peft.set_adapter(group.adapter.adapter_id)  # the swap this baseline measures
            tokens = peft.generate(**batch, **kwargs)
        # What generate adds after the prompt: a causal model returns the prompt too, T5 its decoder start.
        new = tokens[:, batch["input_ids"].shape[1] :] if self.model.family.causal else tokens[:, 1:]
        prompts = batch["attention_mask"].sum(dim=1).tolist()
        updates = []
        for i, (row, prompt) in enumerate(zip(new.tolist(), prompts, strict=True)):
            # Counted as hypernet.decoding counts: new tokens up to and including the EOS.
            end = next((t for t, token in enumerate(row) if token in eos), None)
            row = row if end is None else row[: end + 1]
            text = tokenizer.decode(row, skip_special_tokens=True)
            updates.append(RowUpdate(first_row + i, text, "length" if end is None else "stop", prompt, len(row)))
        return updates

    def _generate_plain(self, batch: dict, kwargs: dict) -> torch.Tensor:
        with self.peft.disable_adapter():
            return self.peft.generate(**batch, **kwargs)

    def _load(self, adapter: Adapter) -> PeftModel:
        """Load an adapter into the PEFT model the first time it is seen, as a PEFT server would."""
        name = adapter.adapter_id
        if self.peft is not None and name in self.peft.peft_config:
            return self.peft
        with tempfile.TemporaryDirectory() as tmp:
            export_peft(adapter, Path(tmp) / name)
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, Path(tmp) / name, adapter_name=name).eval()
            else:
                self.peft.load_adapter(Path(tmp) / name, adapter_name=name)
        return self.peft
