"""The CI skip policy of tests/conftest.py, run on small test files by a real pytest."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ("pytester",)

CONFTEST = Path(__file__).with_name("conftest.py")

SKIPS = """
import pytest

def test_runs():
    assert True

@pytest.mark.skipif(True, reason="needs hardware: a CUDA GPU")
def test_on_gpu():
    pass
"""

MISSING_DATA = """
import pytest

def test_reads_data():
    pytest.skip("data/sni is absent")
"""

MISSING_MODULE = """
import pytest

pytest.importorskip("no_such_browser_driver")

def test_drives_a_browser():
    pass
"""


@pytest.fixture()
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_gpu=SKIPS)
    return pytester


def test_a_hardware_skip_passes_under_ci(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CI", "true")
    result = project.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK
    assert "skips not allowed in CI" not in result.stdout.str()


@pytest.mark.parametrize("source", [MISSING_DATA, MISSING_MODULE], ids=["pytest.skip", "importorskip"])
def test_a_skip_for_something_the_repository_provides_fails_under_ci(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str
):
    project.makepyfile(test_missing=source)
    monkeypatch.delenv("CI", raising=False)
    assert project.runpytest().ret == pytest.ExitCode.OK  # off CI a skip stays a skip
    monkeypatch.setenv("CI", "true")
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*skips not allowed in CI*", "*test_missing.py*: *"])
    assert "test_on_gpu" not in result.stdout.str().split("skips not allowed in CI")[1]  # the GPU skip is not listed
