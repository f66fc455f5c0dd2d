"""`tagi bench core`: the cost of per-example adapters, adapter generation and swapping.

Everything is measured side by side in one process, round-robin, and medians are reported,
because these machines are noisy. The model is a t5-base-size T5 with random weights (nothing
is downloaded); figures are ratios to the plain base forward, so they carry over to real
weights of that shape. A correctness check (our mixed batch vs PEFT's) runs alongside.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tqdm import tqdm
from transformers import T5Config, T5ForConditionalGeneration

from hypernet.batching import AdapterBatcher
from hypernet.config import CheckpointConfig, GeneratorConfig
from hypernet.files import write_json
from hypernet.io import peft_key
from hypernet.model import TagiModel
from hypernet.targets import LoraWeights

TARGETS = ("q", "k", "v", "o", "wi", "wo")
T5_BASE = dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, vocab_size=32128)
QUICK = dict(d_model=128, d_ff=512, d_kv=32, num_heads=4, num_layers=2, vocab_size=1000)


def elapsed_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def build_models(sizes: dict, seed: int) -> tuple[T5ForConditionalGeneration, TagiModel, torch.nn.Module]:
    """Three copies of the same random T5: plain, ours (injected), PEFT."""
    config = T5Config(**sizes, num_decoder_layers=sizes["num_layers"], dropout_rate=0.0, decoder_start_token_id=0)
    torch.manual_seed(seed)
    plain = T5ForConditionalGeneration(config).eval()
    state = plain.state_dict()
    copies = []
    for _ in range(2):
        model = T5ForConditionalGeneration(config).eval()
        model.load_state_dict(state)
        copies.append(model)
    generator = GeneratorConfig(rank=8, alpha=16.0, target_modules=TARGETS)
    ours = TagiModel(copies[0], tokenizer=None, config=CheckpointConfig(generator=generator))
    with torch.no_grad():  # a trained generator emits non-zero B (entries ~0.02); zero B would skip no work
        for head in ours.generator.heads_B.values():
            head.weight.normal_(0, 0.02 / head.in_features**0.5)
    peft = get_peft_model(
        copies[1], LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGETS), task_type="SEQ_2_SEQ_LM"), adapter_name="a0"
    )
    return plain, ours, peft.eval()


def load_into_peft(peft: torch.nn.Module, ours: TagiModel, adapters: list[LoraWeights]) -> list[str]:
    names = []
    for i, adapter in enumerate(adapters):
        name = f"a{i}"
        if i:
            peft.add_adapter(name, peft.peft_config["a0"])
        modules = dict(peft.named_modules())
        for target, group, index in ours.layout.slots():
            layer_A = modules[peft_key(target.path, "A").removesuffix(".weight")]
            layer_B = modules[peft_key(target.path, "B").removesuffix(".weight")]
            layer_A[name].weight.data.copy_(adapter.lora_A[group][index, 0])
            layer_B[name].weight.data.copy_(adapter.lora_B[group][index, 0])
        names.append(name)
    return names


@torch.no_grad()
def run_core_benchmark(json_path: Path | None = None, rounds: int = 7, quick: bool = False, seed: int = 0) -> dict:
    sizes = QUICK if quick else T5_BASE
    batch, input_len, decoder_len, instruction_len = 8, 128, 32, 256
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations raised inside peft
    plain, ours, peft = build_models(sizes, seed)
    g = torch.Generator().manual_seed(seed)
    vocab = sizes["vocab_size"]

    # Eight adapters from eight different (random-token) instructions of 256 tokens.
    instructions = torch.randint(3, vocab, (batch, instruction_len), generator=g)
    instruction_mask = torch.ones(1, instruction_len, dtype=torch.long)
    adapters = [ours.generate_lora(ours.encode_instruction_ids(row[None], instruction_mask)) for row in instructions]
    names = load_into_peft(peft, ours, adapters)

    input_ids = torch.randint(3, vocab, (batch, input_len), generator=g)
    mask = torch.ones_like(input_ids)
    decoder_ids = torch.randint(3, vocab, (batch, decoder_len), generator=g)

    def plain_forward():
        return plain(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits

    batcher = AdapterBatcher(ours.layout, 8, ours.config.generator.scale, torch.float32, torch.device("cpu"))

    def mixed_forward():
        return ours(input_ids, mask, decoder_ids, lora=batcher.assemble(adapters))

    def peft_forward():
        return peft(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_ids, adapter_names=names).logits

    one_instruction = instructions[:1]

    def encode():
        return ours.base.encoder(input_ids=one_instruction, attention_mask=instruction_mask).last_hidden_state

    def generate_adapter():
        return ours.generate_lora(ours.encode_instruction_ids(one_instruction, instruction_mask))

    swap_batcher = AdapterBatcher(ours.layout, 8, ours.config.generator.scale, torch.float32, torch.device("cpu"))
    fresh = [generate_adapter(), generate_adapter()]
    swaps = iter(range(1 << 30))

    def swap():
        # What the server does to make a just-generated adapter usable: copy it into a row of
        # the batch workspace (the other rows hold cached adapters) and point the layers at it.
        new = fresh[next(swaps) % 2]
        with ours.slots.attached(swap_batcher.assemble([new, *adapters[1:]])):
            pass

    mixed_logits = mixed_forward()
    max_diff = (mixed_logits - peft_forward()).abs().max().item()
    adapter_effect = (mixed_logits - plain_forward()).abs().max().item()
    timings: dict[str, list[float]] = {k: [] for k in ("base", "mixed", "peft_mixed", "encode", "generate", "swap")}
    for fn in (plain_forward, mixed_forward, peft_forward, encode, generate_adapter, swap):  # warm-up
        fn()
    for _ in tqdm(range(rounds), desc="bench core rounds"):
        timings["base"].append(elapsed_ms(plain_forward))
        timings["mixed"].append(elapsed_ms(mixed_forward))
        timings["peft_mixed"].append(elapsed_ms(peft_forward))
        timings["encode"].append(elapsed_ms(encode))
        timings["generate"].append(elapsed_ms(generate_adapter))
        timings["swap"].append(statistics.median(elapsed_ms(swap) for _ in range(20)))
    med = {k: statistics.median(v) for k, v in timings.items()}
    result = {
        "mixed_vs_base": med["mixed"] / med["base"],
        "peft_mixed_vs_base": med["peft_mixed"] / med["base"],
        "generate_adapter_vs_encode": med["generate"] / med["encode"],
        "swap_ms": med["swap"],
        "median_ms": med,
        "max_abs_logit_diff_vs_peft": max_diff,
        "max_abs_logit_change_by_adapters": adapter_effect,
        "config": {
            **sizes,
            "batch": batch,
            "input_tokens": input_len,
            "decoder_tokens": decoder_len,
            "instruction_tokens": instruction_len,
            "rank": 8,
            "targets": list(TARGETS),
            "rounds": rounds,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "generator_parameters": sum(p.numel() for p in ours.generator.parameters()),
    }
    print_report(result)
    if json_path is not None:
        write_json(json_path, result)
    return result


def print_report(result: dict) -> None:
    med = result["median_ms"]
    rows = [
        ("plain base forward", f"{med['base']:.1f} ms", ""),
        (
            "tagi mixed batch (8 adapters)",
            f"{med['mixed']:.1f} ms",
            f"mixed_vs_base = {result['mixed_vs_base']:.3f} (target <= 1.15)",
        ),
        (
            "PEFT adapter_names (8 adapters)",
            f"{med['peft_mixed']:.1f} ms",
            f"peft_mixed_vs_base = {result['peft_mixed_vs_base']:.3f}",
        ),
        ("encode 256-token instruction", f"{med['encode']:.1f} ms", ""),
        (
            "generate adapter from it",
            f"{med['generate']:.1f} ms",
            f"generate_adapter_vs_encode = {result['generate_adapter_vs_encode']:.3f} (target <= 1.5)",
        ),
        ("swap in a new adapter", f"{med['swap']:.3f} ms", "swap_ms (target <= 5)"),
    ]
    for name, value, note in rows:
        print(f"{name:<34} {value:>12}  {note}")
    print(
        f"max |logit diff| tagi vs PEFT mixed batch: {result['max_abs_logit_diff_vs_peft']:.2e} "
        f"(the adapters move logits by up to {result['max_abs_logit_change_by_adapters']:.2e})"
    )
