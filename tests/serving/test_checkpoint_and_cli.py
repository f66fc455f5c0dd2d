"""The torch-free checkpoint reader, and the `tagi serve` / `tagi bench serve` commands."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from hypernet.cli import build_parser, main
from hypernet.errors import CheckpointError, UserError
from hypernet.io import checkpoint_fingerprint
from serving.checkpoint import read_checkpoint
from serving.settings import ServerSettings


def test_fingerprint_matches_hypernet_io(serve_checkpoint):
    info = read_checkpoint(serve_checkpoint)
    assert info.fingerprint == checkpoint_fingerprint(serve_checkpoint)
    assert info.describe()["target_modules"] == ["q", "k", "v", "o", "wi", "wo"]


def test_the_checkpoint_reader_does_not_import_torch():
    code = "import sys, serving.checkpoint, serving.server; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_checkpoints_are_one_line_errors(tmp_path, serve_checkpoint):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        read_checkpoint(tmp_path)


def test_serve_reports_user_mistakes_in_one_line(tmp_path, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path / "missing"), "--state-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"tagi: error: checkpoint directory {tmp_path / 'missing'} does not exist"


@pytest.mark.parametrize(
    "field",
    [
        {"workers": 0},
        {"max_batch_size": 0},
        {"batch_timeout": -1},
        {"port": 80},
        {"adapter_cache_mb": -1},
        {"host": "localhost"},
        {"torch_threads": 0},
        {"timeout": 0},
        {"drain_seconds": -1},
    ],
)
def test_settings_reject_bad_values(tmp_path, field):
    with pytest.raises(UserError, match=f"invalid {next(iter(field)).replace('_', '-')}|host"):
        ServerSettings(checkpoint=tmp_path, state_dir=tmp_path, **field)


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[name]


def test_help_explains_every_option():
    root = build_parser()
    for parser in (subcommand(root, "serve"), subcommand(subcommand(root, "bench"), "serve")):
        for action in parser._actions:
            assert action.help, f"{parser.prog} --help says nothing about {action.dest}"
