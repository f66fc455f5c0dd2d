"""The swap-per-request baseline engine (`tagi serve --engine peft-swap`), for benchmarks.

This is how adapters are served without mixed batches: one PEFT model holds every adapter it
has seen, and each request runs alone after `set_adapter` selects its adapter. It plugs into
the same worker, queue, registry and HTTP routes as the real engine, so a benchmark compares
only the engines. PEFT has no instruction fusion, so neither does this engine.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from transformers import T5ForConditionalGeneration

from hypernet.io import export_peft
from hypernet.model import Adapter, TagiModel
from serving.service import RowGroup


class SwapPerRequestEngine:
    supports_fusion = False
    default_fusion = False

    def __init__(self, model: TagiModel, checkpoint: Path) -> None:
        self.model = model
        self.base = T5ForConditionalGeneration.from_pretrained(Path(checkpoint) / "base", use_safetensors=True).eval()
        self.peft: PeftModel | None = None

    def generate(self, groups: Sequence[RowGroup]) -> list[list[str]]:
        return [self._generate_one(group) for group in groups]

    @torch.no_grad()
    def _generate_one(self, group: RowGroup) -> list[str]:
        tokenizer = self.model.tokenizer
        # The model's own tokenization, so the same input token limit applies (InputTooLong).
        batch = self.model.tokenize(self.model.format_inputs(group.inputs), self.model.config.max_input_tokens, "input")
        kwargs = {"max_new_tokens": group.max_new_tokens, "do_sample": False, "num_beams": 1}
        if group.adapter is None:
            tokens = self.base.generate(**batch, **kwargs) if self.peft is None else self._generate_plain(batch, kwargs)
        else:
            peft = self._load(group.adapter)
            peft.set_adapter(group.adapter.adapter_id)  # the swap this baseline measures
            tokens = peft.generate(**batch, **kwargs)
        return tokenizer.batch_decode(tokens, skip_special_tokens=True)

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
