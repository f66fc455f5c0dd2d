"""The text forms of CITING (arXiv 2310.02527): an instruction with its rubric, and the input of the
self-correction pass.

A rubric (what a good answer must satisfy) reaches the hypernetwork as part of the instruction it
reads, so an adapter made with a rubric is another adapter (its id hashes the text as given).
Training writes these forms and `tagi run`, the server and the revise pass read them; they live
here, in hypernet, so that every front end builds byte-identical texts without importing training.
"""

from __future__ import annotations

from hypernet.errors import EmptyInstruction, UserError

MAX_RUBRIC_CHARS = 4096
"""Characters in a rubric a user gives (CLI or HTTP). The checkpoint's instruction token limit,
which the instruction and its rubric share, stays the real bound; this one only bounds what is
read and validated before tokenizing."""
RUBRIC_TEMPLATE = "{instruction}\nRubric: {rubric}"
REVISION_TEMPLATE = "{input}\nDraft: {draft}"


def check_rubric(rubric: str) -> str:
    """The rubric if usable; a blank or over-long one is the user's mistake (one line)."""
    if not rubric.strip():
        raise UserError("rubric is empty")
    if len(rubric) > MAX_RUBRIC_CHARS:
        raise UserError(f"rubric is {len(rubric)} characters; the limit is {MAX_RUBRIC_CHARS}")
    return rubric


def with_rubric(instruction: str, rubric: str) -> str:
    """The instruction the generator reads when a rubric is given. A blank instruction is refused
    here: the rubric would otherwise make it look non-empty."""
    if not instruction.strip():
        raise EmptyInstruction("instruction is empty")
    return RUBRIC_TEMPLATE.format(instruction=instruction.strip(), rubric=check_rubric(rubric).strip())


def revision_input(input_text: str, draft: str) -> str:
    """The input of the self-correction pass: the task's input and the model's first answer to it,
    which the revising adapter turns into the corrected answer."""
    return REVISION_TEMPLATE.format(input=input_text, draft=draft)
