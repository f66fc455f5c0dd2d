"""tagi's model: a frozen T5 plus a hypernetwork that turns an instruction into a LoRA adapter.

Where things are:
    config.py     GeneratorConfig, CheckpointConfig (config.json)
    targets.py    which T5 Linears get LoRA; LoraWeights, the batched factor layout
    lora.py       per-example LoRA math (bmm)
    inject.py     LoraLinear and attach/detach of factors
    batching.py   AdapterBatcher: per-request adapters laid out as one batch, no per-step allocation
    generator.py  AdapterGenerator, the hypernetwork
    fusion.py     instruction fusion (fusion-in-decoder), masked pooling
    model.py      TagiModel: encode instruction -> adapter -> run inputs
    files.py      checkpoint file names, config reading, fingerprints, atomic writes (no torch)
    io.py         loading and saving checkpoints, PEFT export
    tiny.py       a from-scratch tiny T5 and SentencePiece tokenizer
"""
