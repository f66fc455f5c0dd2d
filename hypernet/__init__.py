"""tagi's model: a frozen T5 plus a hypernetwork that turns an instruction into a LoRA adapter.

Where things are:
    config.py     GeneratorConfig, CheckpointConfig (config.json)
    targets.py    which T5 Linears get LoRA; LoraWeights, the batched factor layout
    lora.py       per-example LoRA math (bmm)
    inject.py     LoraLinear and attach/detach of factors
    generator.py  AdapterGenerator, the hypernetwork
    fusion.py     instruction fusion (fusion-in-decoder), masked pooling
    model.py      TagiModel: encode instruction -> adapter -> run inputs
    io.py         checkpoints, fingerprints, PEFT export
    tiny.py       a from-scratch tiny T5 and SentencePiece tokenizer
"""
