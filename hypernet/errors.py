"""Errors that are the user's to fix.

`UserError` marks a mistake in what a user gave us: a bad argument, a missing or malformed
checkpoint, a text over the token limit, an empty instruction. Front ends turn it into one
line (the CLI, exit status 2) or an HTTP 4xx; every other exception is a bug and keeps its
traceback. It subclasses ValueError because each case is a bad value.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake of the user's: reported as one line, never as a traceback."""


class CheckpointError(UserError):
    """A checkpoint or export directory is missing, malformed, or does not match."""


class InputTooLong(UserError):
    """A text exceeds the checkpoint's token limit; we refuse rather than silently truncate."""


class EmptyInstruction(UserError):
    """An instruction is empty or only whitespace (checked before any template is applied)."""
