"""The `tagi` command as a user meets it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import corpus

from hypernet.cli import build_parser, main


def tagi(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hypernet.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def assert_user_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tagi: error:") and fragment in lines[0], result.stderr


def test_init_adapter_run_end_to_end(tmp_path):
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n".join(corpus()))
    ckpt = tmp_path / "ckpt"
    result = tagi("init", "--out", str(ckpt), "--preset", "micro", "--corpus", str(corpus_file))
    assert result.returncode == 0, result.stderr
    assert (ckpt / "config.json").exists() and (ckpt / "base" / "spiece.model").exists()
    assert_user_error(tagi("init", "--out", str(ckpt), "--preset", "micro", "--corpus", str(corpus_file)), "already exists")

    result = tagi("adapter", "--checkpoint", str(ckpt), "--instruction", "Reverse the list.", "--out", str(tmp_path / "a"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a" / "adapter_model.safetensors").exists()

    result = tagi(
        "run",
        "--checkpoint",
        str(ckpt),
        "--instruction",
        "Reverse the list.",
        "--input",
        "apple, river",
        "--input",
        "stone",
        "--max-new-tokens",
        "4",
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "--checkpoint", "/nonexistent/ckpt", "--instruction", "x", "--input", "y"], "does not exist"),
        (["run", "--checkpoint", "{ckpt}", "--instruction", "  ", "--input", "y"], "instruction is empty"),
        (
            ["run", "--checkpoint", "{ckpt}", "--instruction", "@/nonexistent/file.txt", "--input", "y"],
            "cannot read instruction file",
        ),
        (["run", "--checkpoint", "{ckpt}", "--instruction", "x", "--input", "y", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["run", "--checkpoint", "{ckpt}", "--instruction", "word " * 300, "--input", "y"], "limit"),
        (["adapter", "--checkpoint", "{ckpt}", "--instruction", "x", "--out", "{ckpt}"], "already exists"),
        (["init", "--out", "{tmp}/new", "--corpus", "/nonexistent/corpus.txt"], "cannot read corpus file"),
    ],
)
def test_user_mistakes_print_one_line_and_exit_2(checkpoint_dir, tmp_path, capsys, args, fragment):
    """In-process (same `main` as the console script) to keep the suite fast; the end-to-end
    test above covers the real process."""
    args = [a.replace("{ckpt}", str(checkpoint_dir)).replace("{tmp}", str(tmp_path)) for a in args]
    code = main(args)
    assert_user_error(subprocess.CompletedProcess(args, code, "", capsys.readouterr().err), fragment)


def parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(command path, parser) for `tagi` and every subcommand under it, recursively."""
    yield path, parser
    for action in parser._actions:  # argparse has no public way to list subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, (*path, name))


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_help_explains_every_option(capsys):
    """Every option and positional of every subcommand (the model's, serving's and training's, found
    through the entry points) has help text, and that text is in the subcommand's --help output."""
    walked = dict(parsers(build_parser()))
    assert {("serve",), ("train", "distill"), ("bench", "serve"), ("eval",), ("run",), ("adapters", "map")} <= set(walked)
    checked = 0
    for path, parser in walked.items():
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0
        shown = squash(capsys.readouterr().out)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):  # each subcommand is listed with its own help
                for choice in action._choices_actions:
                    assert choice.help and squash(choice.dest) in shown, f"tagi {' '.join(path)} {choice.dest}: no help text"
                    assert squash(choice.help) in shown, f"tagi {' '.join(path)} {choice.dest}: help missing from --help"
                continue
            where = f"tagi {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help is not argparse.SUPPRESS and action.help.strip(), f"{where}: no help text"
            for name in action.option_strings:
                assert squash(name) in shown, f"{where}: {name} missing from --help"
            for literal in re.split(r"%\(\w+\)[sdr]", action.help.replace("%%", "%")):
                assert squash(literal) in shown, f"{where}: help text {action.help!r} missing from --help"
            checked += 1
    assert checked >= 140  # 146 options and positionals when written: a lost subcommand fails here
