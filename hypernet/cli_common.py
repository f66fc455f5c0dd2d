"""Helpers every `tagi` subcommand shares (the model's, the server's and training's).

Subcommand modules import these; `hypernet.cli` only assembles the parser. User mistakes are
raised as `hypernet.errors.UserError` and printed by `hypernet.cli.main` as one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from hypernet.errors import UserError
from hypernet.files import CONFIG_FILE, DEFAULT_CHECKPOINT

if TYPE_CHECKING:
    from hypernet.model import TagiModel


def resolve_checkpoint(path: str | None) -> Path:
    if path is not None:
        return Path(path)
    if (DEFAULT_CHECKPOINT / CONFIG_FILE).exists():
        return DEFAULT_CHECKPOINT
    raise UserError(
        f"no --checkpoint given and no shipped checkpoint at {DEFAULT_CHECKPOINT}; create one with `tagi init --out DIR`"
    )


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="DIR",
        help=f"tagi checkpoint directory (default: the shipped {DEFAULT_CHECKPOINT.parent.name}/tiny when present)",
    )


def load_model(path: str | None, device: str = "cpu", encoder_dir: str | None = None) -> TagiModel:
    from hypernet.io import load_checkpoint

    return load_checkpoint(resolve_checkpoint(path), device=device, encoder_dir=encoder_dir)


def read_text_argument(value: str, what: str) -> str:
    """`@file` reads the text from a file, like curl; anything else is the text itself."""
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text()
        except OSError as err:
            raise UserError(f"cannot read {what} file {value[1:]}: {err.strerror}") from err
    return value


def refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
