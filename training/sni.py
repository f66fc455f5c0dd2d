"""Super-Natural Instructions as the official natural-instructions repository lays it out, loaded lazily.

A clone of allenai/natural-instructions is read as it is: ``ROOT/tasks/<task>.json`` and
``ROOT/splits/<split>/{train,test}_tasks.txt``, plus an optional ``excluded_tasks.txt`` whose
tasks are dropped from both lists. The repository's own subset (data/sni) has the same layout.

Why a store: the default split has 756 training tasks of up to 6,500 instances. Held as
``Pair`` objects that is gigabytes per process, and every rank of a distributed run would hold
its own copy. So rank 0 reads each task file once, one file at a time, and writes the capped
training / held-back pairs to a directory (one JSON line per pair + an int64 offset per pair);
every process then maps those files and decodes a pair only when it is indexed. Memory is the
offsets (8 bytes per pair, in the page cache, shared), not Python objects.

The caps follow Tk-Instruct: the first ``max_instances_per_task`` instances of each training
task in file order, the first 100 of each test task. The train / held-back split of a task's
instances is :func:`training.common.task_pairs`, the same as the eager
:func:`training.common.load_task_set`, so both give the same pairs for the same seed.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

from tqdm.auto import tqdm

from hypernet.errors import UserError
from hypernet.files import atomic_directory, write_json
from training.common import Pair, TaskSet, task_pairs
from training.data import TK_TEST_INSTANCES, Example, PromptFormat, Task, format_instruction, load_task, read_split

TASKS_DIR = "tasks"
SPLITS_DIR = "splits"
TRAIN_LIST = "train_tasks.txt"
TEST_LIST = "test_tasks.txt"
EXCLUDED_LIST = "excluded_tasks.txt"

STORE_VERSION = 1
"""Bumped whenever the store's files change shape, so an old store is rebuilt, never misread."""
MANIFEST = "manifest.json"
TASKS_FILE = "tasks.jsonl"
PARTS = ("train", "held_back")
OFFSET_TYPE = "q"  # int64: a file of many GB still indexes


# --------------------------------------------------------------------------
# The layout


def split_tasks(root: Path, split: str, which: str) -> list[Path]:
    """Task files of ``splits/<split>/<which>`` in list order, minus the split's excluded tasks.

    A split that names a task tasks/ does not hold is the user's mistake (a wrong --sni
    directory, a partial clone): one error naming the missing tasks, not a traceback later."""
    root = Path(root)
    split_dir = root / SPLITS_DIR / split
    if not (split_dir / which).is_file():
        found = sorted(p.name for p in (root / SPLITS_DIR).iterdir() if p.is_dir()) if (root / SPLITS_DIR).is_dir() else []
        raise UserError(f"no {which} for split {split!r} in {root / SPLITS_DIR} (splits found: {', '.join(found) or 'none'})")
    excluded = set(read_split(split_dir / EXCLUDED_LIST)) if (split_dir / EXCLUDED_LIST).is_file() else set()
    names = [name for name in read_split(split_dir / which) if name not in excluded]
    tasks_dir = root / TASKS_DIR
    missing = [name for name in names if not (tasks_dir / f"{name}.json").is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"split {split!r} names {len(missing)} task(s) missing from {tasks_dir}: {shown}")
    return [tasks_dir / f"{name}.json" for name in names]


def _read_task(path: Path, max_instances: int) -> Task:
    """training.data's reading and its messages; a malformed file in the user's clone is the user's
    to fix, so it is a UserError (one line from the CLI), still a ValueError to callers."""
    try:
        return load_task(path, max_instances)
    except ValueError as err:
        raise UserError(str(err)) from err


def sni_test_tasks(root: Path, split: str, max_instances: int = TK_TEST_INSTANCES) -> list[Task]:
    """The test tasks of a split with their first `max_instances` instances (Tk-Instruct's
    evaluation set): 119 tasks x 100 instances is small, so these are loaded eagerly."""
    paths = split_tasks(root, split, TEST_LIST)
    return [_read_task(path, max_instances) for path in tqdm(paths, desc=f"SNI {split} test tasks", disable=None)]


# --------------------------------------------------------------------------
# The lazy sequence


class StoredPairs(Sequence[Pair]):
    """Pairs kept as JSON lines in a file, decoded one at a time on access.

    Holds a read-only map of the file and the (start, end) byte offsets of each line, never a
    list of pairs; a slice is another view of the same map (no copy)."""

    def __init__(self, data: mmap.mmap | bytes, starts: memoryview, ends: memoryview) -> None:
        self._data, self._starts, self._ends = data, starts, ends

    @classmethod
    def open(cls, lines: Path, offsets: Path) -> StoredPairs:
        """The pairs of `lines`, whose n + 1 line starts (the last = the file size) are in `offsets`."""
        bounds = memoryview(_map(offsets)).cast(OFFSET_TYPE)
        return cls(_map(lines), bounds[:-1], bounds[1:])

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, index: int) -> Pair: ...

    @overload
    def __getitem__(self, index: slice) -> StoredPairs: ...

    def __getitem__(self, index: int | slice) -> Pair | StoredPairs:
        if isinstance(index, slice):
            return StoredPairs(self._data, self._starts[index], self._ends[index])
        task, text, output = json.loads(self._data[self._starts[index] : self._ends[index]])
        return Pair(task, text, output)

    def __iter__(self) -> Iterator[Pair]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"StoredPairs({len(self)} pairs)"


def _map(path: Path) -> mmap.mmap | bytes:
    """A read-only map of the file (an empty file cannot be mapped: it is just b"")."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if Path(path).stat().st_size else b""


# --------------------------------------------------------------------------
# The store


def _inputs_digest(paths: list[Path], split_dir: Path) -> str:
    """What the store was built from: the split lists' bytes and each task file's name, size and
    modification time (a changed or replaced file rebuilds; no task file is read to check)."""
    digest = hashlib.sha256()
    for name in (TRAIN_LIST, EXCLUDED_LIST):
        if (split_dir / name).is_file():
            digest.update(name.encode() + b"\0" + (split_dir / name).read_bytes())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _task_record(task: Task) -> dict[str, object]:
    """A task without its instances: what prompts, reports and teacher groups read."""

    def examples(items: tuple[Example, ...]) -> list[list[str]]:
        return [[e.input, e.output, e.explanation] for e in items]

    return {
        "name": task.name,
        "definition": task.definition,
        "positive_examples": examples(task.positive_examples),
        "negative_examples": examples(task.negative_examples),
        "categories": list(task.categories),
    }


def _task_from_record(record: dict) -> Task:
    def examples(items: list[list[str]]) -> tuple[Example, ...]:
        return tuple(Example(*item) for item in items)

    return Task(
        name=record["name"],
        definition=record["definition"],
        positive_examples=examples(record["positive_examples"]),
        negative_examples=examples(record["negative_examples"]),
        instances=(),
        categories=tuple(record["categories"]),
    )


def _build(out: Path, paths: list[Path], max_instances: int, held_back: int, seed: int) -> None:
    """Read each task file once, in split order, and append its pairs to the part files."""
    files = {part: open(out / f"{part}.jsonl", "wb") for part in PARTS}
    offsets = {part: array(OFFSET_TYPE, [0]) for part in PARTS}
    try:
        with open(out / TASKS_FILE, "wb") as tasks_file:
            for index, path in enumerate(tqdm(paths, desc="SNI store", unit="task", disable=None)):
                task = _read_task(path, max_instances)
                tasks_file.write(json.dumps(_task_record(task), ensure_ascii=False).encode() + b"\n")
                for part, pairs in zip(PARTS, task_pairs(index, task, held_back, seed)):
                    for pair in pairs:
                        line = json.dumps([pair.task, pair.input, pair.output], ensure_ascii=False).encode() + b"\n"
                        files[part].write(line)
                        offsets[part].append(offsets[part][-1] + len(line))
    finally:
        for f in files.values():
            f.close()
    for part in PARTS:
        with open(out / f"{part}.offsets", "wb") as f:
            offsets[part].tofile(f)


def _check_settings(max_instances_per_task: int, held_back: int) -> None:
    for name, value, low in (("max_instances_per_task", max_instances_per_task, 1), ("held_back", held_back, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"{name} must be an int >= {low}, got {value!r}")


def sni_task_set(
    root: Path,
    split: str,
    store: Path,
    *,
    prompt_format: PromptFormat,
    max_instances_per_task: int,
    held_back: int,
    seed: int,
    rank0: bool = True,
) -> TaskSet:
    """The training tasks of `split` (minus its excluded tasks) as a TaskSet whose pairs live in `store`.

    With `rank0` the store is built if it is missing or was built from other inputs or settings
    (its manifest records them); otherwise it is only opened, and must be what rank 0 built with
    these settings: run rank 0 first, then a barrier, then the other ranks. Tasks carry their
    definition, examples and categories but no instances (``instances=()``); ``train`` and
    ``held_back`` are :class:`StoredPairs`.
    """
    _check_settings(max_instances_per_task, held_back)
    root, store = Path(root).resolve(), Path(store)
    settings = {
        "version": STORE_VERSION,
        "root": str(root),
        "split": split,
        "prompt_format": prompt_format,
        "max_instances_per_task": max_instances_per_task,
        "held_back": held_back,
        "seed": seed,
    }
    found = json.loads((store / MANIFEST).read_text()) if (store / MANIFEST).is_file() else None
    if rank0:
        paths = split_tasks(root, split, TRAIN_LIST)
        if not paths:
            raise UserError(f"split {split!r} of {root} has no training tasks")
        manifest = {**settings, "inputs": _inputs_digest(paths, root / SPLITS_DIR / split)}
        if found != manifest:
            if found is None and store.exists() and any(store.iterdir()):
                raise UserError(f"{store} is not an SNI store (no {MANIFEST}) and not empty: refusing to replace it")
            with atomic_directory(store, overwrite=True) as tmp:
                _build(tmp, paths, max_instances_per_task, held_back, seed)
                write_json(tmp / MANIFEST, manifest)
    elif found is None or {k: found.get(k) for k in settings} != settings:
        what = "holds no SNI store" if found is None else "was built with other settings"
        raise UserError(f"{store} {what}: rank 0 builds it (rank0=True) before the other ranks open it")
    with open(store / TASKS_FILE, "rb") as f:
        tasks = [_task_from_record(json.loads(line)) for line in f]
    train, held = (StoredPairs.open(store / f"{part}.jsonl", store / f"{part}.offsets") for part in PARTS)
    return TaskSet(tasks, [format_instruction(t, prompt_format) for t in tasks], train, held)
