"""Shared fixtures: tiny checkpoints built from scratch in seconds (nothing is downloaded).

Also the skip policy. A skipped test proves nothing, and a skip for something the repository
ships (the SNI subset, the shipped checkpoint) or CI installs hides a broken checkout behind a
green run. So when the environment variable CI is set (`.ci/run` sets it), any skip whose
reason does not start with HARDWARE_SKIP ("needs hardware:", e.g. "needs hardware: a CUDA GPU")
fails the session, listing each such test with its reason. Off CI, skips stay skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from support import ALL_TARGETS, make_checkpoint
from transformers.utils import logging as hf_logging

from hypernet.io import load_checkpoint
from hypernet.model import TagiModel

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()
torch.set_num_threads(2)

HARDWARE_SKIP = "needs hardware:"
"""The one reason prefix a skip may have under CI: hardware this machine lacks."""


class SkipPolicy:
    """Collects the skips CI does not allow and fails the run that had them."""

    def __init__(self) -> None:
        self.disallowed: list[tuple[str, str]] = []

    def _check(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        longrepr = report.longrepr  # (path, line, "Skipped: reason") for a skip
        reason = str(longrepr[2]).removeprefix("Skipped: ") if isinstance(longrepr, tuple) else str(longrepr)
        if not reason.startswith(HARDWARE_SKIP):
            self.disallowed.append((report.nodeid, reason))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._check(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._check(report)  # a module skipped as a whole at import

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.disallowed and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:  # noqa: ANN001 (TerminalReporter is not public API)
        if not self.disallowed:
            return
        terminalreporter.section("skips not allowed in CI", red=True, bold=True)
        terminalreporter.line(
            f"CI is set: a test may skip only for hardware the machine lacks (a reason starting with {HARDWARE_SKIP!r}); "
            "what the repository ships or CI installs must be there. These skips fail the run:"
        )
        for nodeid, reason in self.disallowed:
            terminalreporter.line(f"  {nodeid}: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        config.pluginmanager.register(SkipPolicy(), "tagi-skip-policy")


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro checkpoint (q, k, v, o, wi, wo targets) whose adapters are non-zero."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), ALL_TARGETS, trained=True)


@pytest.fixture(scope="session")
def untrained_checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt0"), ("q", "v"), trained=False)


@pytest.fixture()
def model(checkpoint_dir: Path) -> TagiModel:
    return load_checkpoint(checkpoint_dir)
