"""The `tagi` command as a user meets it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support import corpus
from hypernet.cli import main


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

    result = tagi("run", "--checkpoint", str(ckpt), "--instruction", "Reverse the list.", "--input", "apple, river", "--input", "stone", "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "--checkpoint", "/nonexistent/ckpt", "--instruction", "x", "--input", "y"], "does not exist"),
        (["run", "--checkpoint", "{ckpt}", "--instruction", "  ", "--input", "y"], "instruction is empty"),
        (["run", "--checkpoint", "{ckpt}", "--instruction", "@/nonexistent/file.txt", "--input", "y"], "cannot read instruction file"),
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


def test_help_explains_every_option(capsys):
    for command in (["run"], ["adapter"], ["init"], ["bench", "core"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        for line in capsys.readouterr().out.splitlines():
            if line.strip().startswith("--") and "  " in line.strip():
                assert line.split("  ", 1)[1].strip(), f"option without help: {line}"
