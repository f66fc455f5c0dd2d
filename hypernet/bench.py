"""`tagi bench core`: the cost of per-example adapters, adapter generation and swapping.

Everything is measured side by side in one process, round-robin, and medians are reported,
because these machines are noisy. The models have random weights (nothing is downloaded):
`--family t5` a t5-base-size T5, `--family causal` a Qwen2-0.5B-shaped decoder (its vocabulary
cut to 2,000, as a locally built tokenizer has). Figures are ratios to the plain base, so they
carry over to real weights of that shape. A correctness check (our mixed batch vs PEFT's) runs
alongside. For a decoder the decode loop is timed too: a prompt pass, then one token per step
with the key/value cache, with eight different adapters, with none, on the plain base and in PEFT.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, get_peft_model
from tqdm import tqdm
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, T5Config, T5ForConditionalGeneration
from transformers.cache_utils import DynamicCache

from hypernet.causal import CausalTagiModel
from hypernet.config import CheckpointConfig, GeneratorConfig
from hypernet.families import FAMILIES, Family
from hypernet.files import write_json
from hypernet.fusion import InstructionEncoding, concat_instructions
from hypernet.io import peft_key
from hypernet.model import TagiModel
from hypernet.targets import LoraWeights
from hypernet.tiny_causal import CausalPreset, causal_config

BenchFamily = Literal["t5", "causal"]
BATCH, INPUT_TOKENS, DECODER_TOKENS, INSTRUCTION_TOKENS, RANK = 8, 128, 32, 256, 8
"""Eight rows with eight different adapters; the decoder/answer length is also the number of decode steps."""
T5_TARGETS = ("q", "k", "v", "o", "wi", "wo")
T5_BASE = dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, vocab_size=32128)
T5_QUICK = dict(d_model=128, d_ff=512, d_kv=32, num_heads=4, num_layers=2, vocab_size=1000)
CAUSAL_FAMILY = "qwen2"
QWEN2_05B = CausalPreset(hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2, vocab_size=2000)
CAUSAL_QUICK = CausalPreset(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=1000)
DEFAULT_ROUNDS: dict[BenchFamily, int] = {"t5": 7, "causal": 3}
"""A full-size causal round prefills 8 x 128 tokens five times: three rounds take minutes on 2 cores."""
MIXED_TARGET: dict[BenchFamily, float] = {"t5": 1.15, "causal": 1.10}


def elapsed_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


@dataclass
class Models:
    """Three copies of the same random base: plain, ours (injected), PEFT; and the config reported."""

    plain: PreTrainedModel
    ours: TagiModel
    peft: torch.nn.Module
    family: Family
    sizes: dict


def base_config(family: BenchFamily, quick: bool) -> tuple[PretrainedConfig, Family, dict]:
    if family == "t5":
        sizes = T5_QUICK if quick else T5_BASE
        config = T5Config(**sizes, num_decoder_layers=sizes["num_layers"], dropout_rate=0.0, decoder_start_token_id=0)
        return config, FAMILIES["t5"], {**sizes, "targets": list(T5_TARGETS)}
    preset = CAUSAL_QUICK if quick else QWEN2_05B
    sizes = {"layout": CAUSAL_FAMILY, **vars(preset), "targets": list(FAMILIES[CAUSAL_FAMILY].module_names)}
    return causal_config(CAUSAL_FAMILY, preset), FAMILIES[CAUSAL_FAMILY], sizes


def build_models(family: BenchFamily, quick: bool, seed: int) -> Models:
    config, base_family, sizes = base_config(family, quick)

    def make() -> PreTrainedModel:
        if base_family.causal:
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        return T5ForConditionalGeneration(config).eval()

    torch.manual_seed(seed)
    plain = make()
    state = plain.state_dict()
    copies = []
    for _ in range(2):
        model = make()
        model.load_state_dict(state)
        copies.append(model)
    targets = tuple(sizes["targets"])
    generator = GeneratorConfig(rank=RANK, alpha=16.0, target_modules=targets)
    ours_class = CausalTagiModel if base_family.causal else TagiModel
    ours = ours_class(copies[0], tokenizer=None, config=CheckpointConfig(generator=generator))
    with torch.no_grad():  # a trained generator emits non-zero B (entries ~0.02); zero B would skip no work
        for head in ours.generator.heads_B.values():
            head.weight.normal_(0, 0.02 / head.in_features**0.5)
    lora = LoraConfig(r=RANK, lora_alpha=16, target_modules=list(targets), task_type=base_family.peft_task_type)
    peft = get_peft_model(copies[1], lora, adapter_name="a0")
    return Models(plain, ours, peft.eval(), base_family, sizes)


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


Logits = Callable[[torch.Tensor | None], torch.Tensor]
"""One decode step: the previous step's tokens (None: the prompt) -> the next token's logits (b, vocab)."""


def greedy_decode(start: Callable[[], Logits], steps: int) -> tuple[float, float]:
    """(ms of the prompt pass, median ms of one decode step) of a greedy loop of `steps` tokens."""
    begin = time.perf_counter()
    logits = start()
    tokens = logits(None).argmax(dim=-1)
    prefill = (time.perf_counter() - begin) * 1000
    times = []
    for _ in range(steps):
        begin = time.perf_counter()
        tokens = logits(tokens).argmax(dim=-1)
        times.append((time.perf_counter() - begin) * 1000)
    return prefill, statistics.median(times)


def hf_decoder(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, **kwargs: object) -> Logits:
    """A Hugging Face causal LM's own step with its key/value cache (the plain base; PEFT with
    `adapter_names`): the reference our decode loop is compared with."""
    cache = DynamicCache(config=model.config)
    attention = mask

    def logits(tokens: torch.Tensor | None) -> torch.Tensor:
        nonlocal attention
        if tokens is not None:
            attention = torch.cat([attention, attention.new_ones(attention.shape[0], 1)], dim=1)
        step = input_ids if tokens is None else tokens[:, None]
        out = model(input_ids=step, attention_mask=attention, cache=cache, use_cache=True, logits_to_keep=1, **kwargs)
        return out.logits[:, -1]

    return logits


@torch.no_grad()
def run_core_benchmark(
    json_path: Path | None = None,
    rounds: int | None = None,
    quick: bool = False,
    seed: int = 0,
    family: BenchFamily = "t5",
) -> dict:
    rounds = DEFAULT_ROUNDS[family] if rounds is None else rounds
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations raised inside peft
    models = build_models(family, quick, seed)
    plain, ours, peft = models.plain, models.ours, models.peft
    causal = models.family.causal
    g = torch.Generator().manual_seed(seed)
    vocab = plain.config.vocab_size

    # Eight adapters from eight different (random-token) instructions of 256 tokens.
    instructions = torch.randint(3, vocab, (BATCH, INSTRUCTION_TOKENS), generator=g)
    instruction_mask = torch.ones(1, INSTRUCTION_TOKENS, dtype=torch.long)
    rows = tqdm(instructions, desc="bench core: 8 adapters", leave=False)
    encodings = [ours.encode_instruction_ids(row[None], instruction_mask) for row in rows]
    adapters = [ours.generate_lora(encoding) for encoding in encodings]
    names = load_into_peft(peft, ours, adapters)

    input_ids = torch.randint(3, vocab, (BATCH, INPUT_TOKENS), generator=g)
    mask = torch.ones_like(input_ids)
    decoder_ids = torch.randint(3, vocab, (BATCH, DECODER_TOKENS), generator=g)
    if causal:  # the prompt, then the answer (the decoder start column has no meaning for a decoder)
        sequence = torch.cat([input_ids, decoder_ids[:, 1:]], dim=1)
        base_inputs = dict(input_ids=sequence, attention_mask=torch.ones_like(sequence))
    else:
        base_inputs = dict(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_ids)
    answer = slice(INPUT_TOKENS - 1, None) if causal else slice(None)  # the logits that predict the answer

    def plain_forward() -> torch.Tensor:
        return plain(**base_inputs).logits[:, answer]

    batcher = ours.new_workspace()

    def mixed_forward() -> torch.Tensor:
        return ours(input_ids, mask, decoder_ids, lora=batcher.assemble(adapters))

    def peft_forward() -> torch.Tensor:
        return peft(**base_inputs, adapter_names=names).logits[:, answer]

    one_instruction = instructions[:1]
    reader = ours.base.base_model if causal else ours.base.encoder

    def encode() -> torch.Tensor:
        return reader(input_ids=one_instruction, attention_mask=instruction_mask).last_hidden_state

    def generate_adapter() -> LoraWeights:
        return ours.generate_lora(ours.encode_instruction_ids(one_instruction, instruction_mask))

    swap_batcher = ours.new_workspace()
    fresh = [generate_adapter(), generate_adapter()]
    swaps = iter(range(1 << 30))

    def swap() -> None:
        # What the server does to make a just-generated adapter usable: copy it into a row of
        # the batch workspace (the other rows hold cached adapters) and point the layers at it.
        new = fresh[next(swaps) % 2]
        with ours.slots.attached(swap_batcher.assemble([new, *adapters[1:]])):
            pass

    timed: dict[str, Callable[[], object]] = {
        "base": plain_forward,
        "mixed": mixed_forward,
        "peft_mixed": peft_forward,
        "encode": encode,
        "generate": generate_adapter,
    }
    # Decode loops (decoder only): our stepper with 8 adapters and with none, the plain base, PEFT;
    # fusion (each row attends to its instruction's prefix, computed once with its adapter) against
    # the usual way to give a decoder its instruction: the instruction's tokens before the input,
    # read again for every request.
    decode_batcher = ours.new_workspace()
    decoders: dict[str, Callable[[], Logits]] = {}
    if causal:
        prefixes = concat_instructions(encodings)
        concatenated = torch.cat([instructions, input_ids], dim=1)

        def ours_with(fusion: InstructionEncoding | None) -> Logits:
            return ours.stepper(input_ids, mask, fusion, ours.slots.prepare(decode_batcher.assemble(adapters))).logits

        decoders = {
            "base": lambda: hf_decoder(plain, input_ids, mask),
            "none": lambda: ours.stepper(input_ids, mask, None, None).logits,
            "mixed": lambda: ours_with(None),
            "peft_mixed": lambda: hf_decoder(peft, input_ids, mask, adapter_names=names),
            "fusion": lambda: ours_with(prefixes),
            "concat": lambda: hf_decoder(plain, concatenated, torch.ones_like(concatenated)),
        }

    mixed_logits = mixed_forward()
    max_diff = (mixed_logits - peft_forward()).abs().max().item()
    adapter_effect = (mixed_logits - plain_forward()).abs().max().item()
    for fn in (*timed.values(), swap):  # warm-up
        fn()
    for start in decoders.values():
        greedy_decode(start, 1)
    timings: dict[str, list[float]] = {k: [] for k in (*timed, "swap")}
    timings |= {f"{kind}_{k}": [] for k in decoders for kind in ("prefill", "decode_step")}
    for _ in tqdm(range(rounds), desc=f"bench core ({family}) rounds"):
        for name, fn in timed.items():
            timings[name].append(elapsed_ms(fn))
        timings["swap"].append(statistics.median(elapsed_ms(swap) for _ in range(20)))
        for name, start in decoders.items():
            prefill, step = greedy_decode(start, DECODER_TOKENS)
            timings[f"prefill_{name}"].append(prefill)
            timings[f"decode_step_{name}"].append(step)
    med = {k: statistics.median(v) for k, v in timings.items()}
    result = {
        "family": family,
        "mixed_vs_base": med["mixed"] / med["base"],
        "peft_mixed_vs_base": med["peft_mixed"] / med["base"],
        "generate_adapter_vs_encode": med["generate"] / med["encode"],
        "swap_ms": med["swap"],
    }
    if causal:
        result |= {
            "decode_mixed_vs_none": med["decode_step_mixed"] / med["decode_step_none"],
            "decode_mixed_vs_base": med["decode_step_mixed"] / med["decode_step_base"],
            "decode_peft_mixed_vs_base": med["decode_step_peft_mixed"] / med["decode_step_base"],
            "prefill_mixed_vs_base": med["prefill_mixed"] / med["prefill_base"],
            "prefill_fusion_vs_concat": med["prefill_fusion"] / med["prefill_concat"],
            "decode_fusion_vs_concat": med["decode_step_fusion"] / med["decode_step_concat"],
            "decode_fusion_vs_mixed": med["decode_step_fusion"] / med["decode_step_mixed"],
        }
    result |= {
        "median_ms": med,
        "max_abs_logit_diff_vs_peft": max_diff,
        "max_abs_logit_change_by_adapters": adapter_effect,
        "config": {
            **models.sizes,
            "batch": BATCH,
            "input_tokens": INPUT_TOKENS,
            "decoder_tokens": DECODER_TOKENS,
            "instruction_tokens": INSTRUCTION_TOKENS,
            "rank": RANK,
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
    causal = result["family"] == "causal"
    forward = "forward (128-token prompt + 31-token answer)" if causal else "forward"
    rows = [
        (f"plain base {forward}", f"{med['base']:.1f} ms", ""),
        (
            "tagi mixed batch (8 adapters)",
            f"{med['mixed']:.1f} ms",
            f"mixed_vs_base = {result['mixed_vs_base']:.3f} (target <= {MIXED_TARGET[result['family']]:.2f})",
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
    if causal:
        rows += [
            ("prompt pass, plain base", f"{med['prefill_base']:.1f} ms", ""),
            (
                "prompt pass, tagi 8 adapters",
                f"{med['prefill_mixed']:.1f} ms",
                f"prefill_mixed_vs_base = {result['prefill_mixed_vs_base']:.3f}",
            ),
            ("decode step, plain base", f"{med['decode_step_base']:.2f} ms", ""),
            ("decode step, tagi no adapter", f"{med['decode_step_none']:.2f} ms", ""),
            (
                "decode step, tagi 8 adapters",
                f"{med['decode_step_mixed']:.2f} ms",
                f"decode_mixed_vs_none = {result['decode_mixed_vs_none']:.3f}, vs base {result['decode_mixed_vs_base']:.3f}",
            ),
            (
                "decode step, PEFT 8 adapters",
                f"{med['decode_step_peft_mixed']:.2f} ms",
                f"decode_peft_mixed_vs_base = {result['decode_peft_mixed_vs_base']:.3f}",
            ),
            ("prompt pass, base, 256-token instruction + input", f"{med['prefill_concat']:.1f} ms", ""),
            (
                "prompt pass, tagi 8 adapters + fusion prefix",
                f"{med['prefill_fusion']:.1f} ms",
                f"prefill_fusion_vs_concat = {result['prefill_fusion_vs_concat']:.3f}",
            ),
            ("decode step, base, instruction + input", f"{med['decode_step_concat']:.2f} ms", ""),
            (
                "decode step, tagi 8 adapters + fusion prefix",
                f"{med['decode_step_fusion']:.2f} ms",
                f"decode_fusion_vs_concat = {result['decode_fusion_vs_concat']:.3f}, "
                f"vs no fusion {result['decode_fusion_vs_mixed']:.3f}",
            ),
        ]
    for name, value, note in rows:
        print(f"{name:<50} {value:>12}  {note}")
    print(
        f"max |logit diff| tagi vs PEFT mixed batch: {result['max_abs_logit_diff_vs_peft']:.2e} "
        f"(the adapters move logits by up to {result['max_abs_logit_change_by_adapters']:.2e})"
    )
