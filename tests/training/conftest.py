"""Fixtures of the training tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import training.loop as loop_module


class Killed(Exception):
    """Stands for the process dying: nothing after it runs, no save happens."""


@pytest.fixture()
def kill_at_step(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], type[Killed]]:
    """`kill_at_step(n)`: the next training loop dies as step n + 1 begins (n steps done,
    whatever was saved last stays), like a process killed between two checkpoints."""

    def arm(steps_done: int) -> type[Killed]:
        real = loop_module.lr_at

        def lr_at(config, step):
            if step == steps_done:
                monkeypatch.setattr(loop_module, "lr_at", real)
                raise Killed(f"killed after step {steps_done}")
            return real(config, step)

        monkeypatch.setattr(loop_module, "lr_at", lr_at)
        return Killed

    return arm
