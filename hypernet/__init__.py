"""tagi's model: a frozen base (T5, or a decoder-only Llama / Mistral / Qwen2 / Qwen3 / GPT-2) plus
a hypernetwork that turns an instruction into a LoRA adapter.

The public API:

    import hypernet
    model = hypernet.load("checkpoints/tiny")            # device=, dtype= optional; None: the shipped one
    adapter = model.adapter("Sort the numbers from smallest to largest.")
    model.generate(["3, 88, 12, 40"], adapter)               # a list of adapters for a mixed batch
    model.generate(inputs, adapter, sampling=hypernet.Sampling(temperature=0.7, seed=1, stop=("\n",)))
    for updates in model.generate_stream(inputs, adapter): ...  # per decode step: RowUpdate (delta, finish_reason, usage)
    adapter.save_peft("out/")                            # a standard PEFT LoRA directory

Where things are:
    config.py     GeneratorConfig, CheckpointConfig (config.json), DEFAULT_MAX_NEW_TOKENS
    errors.py     UserError and its kinds: what front ends report as one line / HTTP 4xx
    families.py   the supported base families: module names, default targets, PEFT task type, loading
    targets.py    which Linears (GPT-2: Conv1D) of a base get LoRA; LoraWeights, the batched factor layout
    lora.py       per-example LoRA math (bmm)
    inject.py     LoraLinear and attach/detach of factors
    batching.py   per-request adapters laid out as one batch (AdapterBatcher, stack_adapters)
    generator.py  AdapterGenerator, the hypernetwork
    fusion.py     instruction fusion (fusion-in-decoder; a decoder's prefix key/values), masked pooling
    model.py      TagiModel (T5): instruction -> adapter -> outputs; Adapter
    causal.py     CausalTagiModel: the same on a decoder-only base (prompt + answer, prefix fusion)
    decoding.py   the step-wise decode loop: Sampling, RowUpdate, stop strings, early finish
    chat.py       a chat template turned into the checkpoint's input_template
    rubric.py     CITING's text forms: an instruction with its rubric, the revise pass's input
    files.py      checkpoint file names, config reading, fingerprints, atomic writes (no torch)
    io.py         loading and saving checkpoints; the PEFT format (exports, teachers)
    export.py     batch export of many instructions (manifest, resume), merged models
    adapter_map.py  the adapter space in two dimensions (PCA of delta-W), same- vs other-task similarity
    tiny.py       a from-scratch tiny T5 and SentencePiece tokenizer
    tiny_causal.py  from-scratch tiny decoder-only bases and a byte-level BPE tokenizer
    cli.py        the `tagi` command (cli_common.py: helpers the serving and training commands share)
    bench.py      `tagi bench core`; bench_export.py: `tagi bench export`
"""

from __future__ import annotations

from typing import Any

from hypernet.errors import UserError

__all__ = ["Adapter", "Sampling", "TagiModel", "UserError", "load"]

_LAZY = {"load": "hypernet.io", "Adapter": "hypernet.model", "Sampling": "hypernet.decoding", "TagiModel": "hypernet.model"}


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): `import hypernet.files` must not pull in torch, so that processes which
    # only route requests stay light; the model API loads on first use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hypernet' has no attribute {name!r}")
