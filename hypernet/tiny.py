"""A tiny T5 and its SentencePiece tokenizer, built locally so that nothing is downloaded.

Real users point tagi at a t5-lm-adapt or flan-t5 directory instead. The tokenizer uses T5's
special ids (pad=0, eos=1, unk=2, no bos) so the tiny base is a drop-in T5 for transformers
and PEFT. Every printable ASCII character is added to the corpus, so ASCII text never maps to
<unk>; SentencePiece's byte fallback would do more, but transformers' T5 tokenizer ignores it
and the two would disagree.
"""

from __future__ import annotations

import io
import string
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
    T5Tokenizer,
)

from hypernet.files import SPIECE, atomic_directory, atomic_write_bytes


@dataclass(frozen=True)
class TinyPreset:
    """Sizes of a from-scratch base. `tiny` is ~7.6M parameters: trainable on 2 CPU cores."""

    d_model: int = 256
    d_ff: int = 1024
    num_layers: int = 4
    num_heads: int = 8
    d_kv: int = 32
    vocab_size: int = 2000
    dropout_rate: float = 0.0


PRESETS = {"tiny": TinyPreset(), "micro": TinyPreset(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16, vocab_size=400)}


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int, symbols: tuple[str, ...] = ()) -> Path:
    """Train a unigram SentencePiece model with T5's ids on `texts`; returns the spiece.model path.
    `symbols` become single pieces whatever the corpus (e.g. span-corruption sentinels)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([*texts, " ".join(string.printable.strip())]),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus may not support the full size: take what it has
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        user_defined_symbols=list(symbols),
        character_coverage=1.0,
        num_threads=2,
        minloglevel=2,
    )
    path = out_dir / SPIECE
    atomic_write_bytes(path, model.getvalue())
    return path


def load_tokenizer(base_dir: Path) -> PreTrainedTokenizerBase:
    """transformers 5 ignores `T5Tokenizer(vocab_file=...)`; from_pretrained on the directory
    with extra_ids=0 reproduces SentencePiece's ids (tested)."""
    if (base_dir / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(base_dir)
    return T5Tokenizer.from_pretrained(base_dir, extra_ids=0)


def build_tiny_base(texts: list[str], out_dir: Path, preset: TinyPreset, seed: int = 0, symbols: tuple[str, ...] = ()) -> None:
    """Write an HF model directory (random weights, tokenizer, spiece.model) to `out_dir`,
    replacing it whole: a crash leaves the old directory or none, never a base without weights."""
    with atomic_directory(Path(out_dir), overwrite=True) as tmp:
        spiece = train_tokenizer(texts, tmp, preset.vocab_size, symbols)
        vocab_size = spm.SentencePieceProcessor(model_file=str(spiece)).vocab_size()
        load_tokenizer(tmp).save_pretrained(tmp)
        config = T5Config(
            vocab_size=vocab_size,
            d_model=preset.d_model,
            d_ff=preset.d_ff,
            d_kv=preset.d_kv,
            num_layers=preset.num_layers,
            num_decoder_layers=preset.num_layers,
            num_heads=preset.num_heads,
            dropout_rate=preset.dropout_rate,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
        model.generation_config = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
        model.save_pretrained(tmp)
