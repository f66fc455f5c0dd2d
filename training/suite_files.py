"""Writing a planned suite to disk: one SNI task file per task, plus one split list per split.

The files are what every stage reads (through ``training.data``), so the
suite's layout, metadata and atomic writes live in one place.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypernet.files import atomic_write_text
from training.data import Task, task_to_dict
from training.suite import Suite

_SNI_METADATA = {
    "Contributors": ["tagi"],
    "Source": ["tagi synthetic list world"],
    "URL": [],
    "Reasoning": [],
    "Input_language": ["English"],
    "Output_language": ["English"],
    "Instruction_language": ["English"],
    "Domains": ["Lists"],
}


def _sni_json(task: Task) -> str:
    document = {**_SNI_METADATA, **task_to_dict(task)}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_suite(suite: Suite, out_dir: str | Path) -> None:
    """Write ``out_dir/<split>/<task>.json`` and ``out_dir/splits/<split>.txt``.

    Refuses to mix with task files from another suite: a stale file in a split
    directory would be picked up by directory-based loading. Each file is
    written atomically, so an interrupted run never leaves half a task behind.
    """
    out_dir = Path(out_dir)
    splits = suite.splits()
    for split, tasks in splits.items():
        wanted = {f"{t.task.name}.json" for t in tasks}
        stale = sorted(p.name for p in (out_dir / split).glob("*.json") if p.name not in wanted)
        if stale:
            raise ValueError(
                f"{out_dir / split} holds {len(stale)} task files not in this suite "
                f"(e.g. {stale[0]}); write to an empty directory"
            )
    for split, tasks in splits.items():
        for synth in tasks:
            atomic_write_text(out_dir / split / f"{synth.task.name}.json", _sni_json(synth.task))
        atomic_write_text(out_dir / "splits" / f"{split}.txt", "".join(f"{t.task.name}\n" for t in tasks))
