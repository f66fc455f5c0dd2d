"""The SQLite registry: shared by processes, keyed by checkpoint, first creation wins; and the
adapter ids it stores, stable across processes and releases."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
import subprocess
import sys

from serving.registry import Registry
from serving.schemas import AdapterInfo


def info(adapter_id: str, created_at: float = 1.0, instruction: str = "Reverse the list.") -> AdapterInfo:
    return AdapterInfo(
        adapter_id=adapter_id,
        instruction=instruction,
        rank=8,
        target_modules=["q", "v"],
        num_parameters=1024,
        created_at=created_at,
    )


def test_add_get_list_delete(tmp_path):
    registry = Registry(tmp_path, "ckpt-a")
    registry.add([info("id2", 2.0), info("id1", 1.0)])
    registry.add([info("id1", 9.0, "changed")])  # already there: keeps the first record
    assert registry.get("id1") == info("id1", 1.0)
    assert [r.adapter_id for r in registry.list()] == ["id1", "id2"], "by id"
    assert set(registry.get_many(["id1", "id2", "nope"])) == {"id1", "id2"}
    assert registry.delete("id1") and not registry.delete("id1")
    assert registry.get("id1") is None


def test_rows_of_another_checkpoint_are_invisible(tmp_path):
    Registry(tmp_path, "ckpt-a").add([info("id1")])
    other = Registry(tmp_path, "ckpt-b")
    assert other.get("id1") is None and other.list() == [] and not other.delete("id1")
    assert Registry(tmp_path, "ckpt-a").get("id1") is not None


def test_list_pages_by_id(tmp_path):
    registry = Registry(tmp_path, "ckpt")
    registry.add([info(f"id{i}", created_at=10.0 - i) for i in (3, 1, 2)])  # created in another order than ids
    assert [r.adapter_id for r in registry.list()] == ["id1", "id2", "id3"]
    assert [r.adapter_id for r in registry.list(limit=2)] == ["id1", "id2"]
    assert [r.adapter_id for r in registry.list(limit=2, after="id1")] == ["id2", "id3"]
    assert [r.adapter_id for r in registry.list(after="id15")] == ["id2", "id3"], "a cursor need not exist"
    assert registry.list(after="id3") == []


def test_the_least_recently_used_rows_beyond_the_bound_go(tmp_path):
    registry = Registry(tmp_path, "ckpt", max_adapters=3)
    for name in ("a", "b", "c"):
        registry.add([info(name)])
    assert registry.get_many(["a"]).keys() == {"a"}  # a use: "b" is now the least recently used
    registry.add([info("d")])
    assert sorted(r.adapter_id for r in registry.list()) == ["a", "c", "d"]
    registry.add([info("a", instruction="again")])  # an existing id: no new row, nothing evicted
    assert sorted(r.adapter_id for r in registry.list()) == ["a", "c", "d"]
    assert registry.get("a").instruction == "Reverse the list.", "first creation wins"
    registry.add([info("b")])  # back, as the newest; "c" was used least recently
    assert sorted(r.adapter_id for r in registry.list()) == ["a", "b", "d"]
    Registry(tmp_path, "other", max_adapters=1).add([info("x"), info("y")])
    assert len(Registry(tmp_path, "ckpt").list()) == 3, "each checkpoint's rows are bounded on their own"


def test_a_registry_file_of_an_unbounded_server_is_migrated(tmp_path):
    """Files written before last_used existed keep their rows (used as of creation), and the
    archives that server stored per download go."""
    with sqlite3.connect(tmp_path / "registry.sqlite3") as db:
        db.execute(
            "CREATE TABLE adapters (adapter_id TEXT PRIMARY KEY, checkpoint TEXT NOT NULL, instruction TEXT NOT NULL, "
            "rank INTEGER NOT NULL, target_modules TEXT NOT NULL, num_parameters INTEGER NOT NULL, created_at REAL NOT NULL)"
        )
        db.execute("CREATE INDEX adapters_by_checkpoint ON adapters (checkpoint, created_at)")
        for name, created in (("old", 1.0), ("older", 0.5)):
            row = (name, "ckpt", "Reverse the list.", 8, '["q", "v"]', 1024, created)
            db.execute("INSERT INTO adapters VALUES (?, ?, ?, ?, ?, ?, ?)", row)
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "old.tar.gz").write_bytes(b"x" * 1000)

    registry = Registry(tmp_path, "ckpt", max_adapters=2)
    assert registry.get_many(["old", "older"]) == {"old": info("old", 1.0), "older": info("older", 0.5)}
    assert not (tmp_path / "exports").exists()
    registry.get("older")  # used last: "old" goes first
    registry.add([info("new")])
    assert sorted(r.adapter_id for r in Registry(tmp_path, "ckpt").list()) == ["new", "older"]


def _add_many(state_dir: str, start: int) -> None:
    registry = Registry(state_dir, "ckpt")
    for i in range(start, start + 50):
        registry.add([info(f"id{i:03d}", float(i))])


def test_concurrent_writers_in_separate_processes(tmp_path):
    Registry(tmp_path, "ckpt")
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_add_many, args=(str(tmp_path), start)) for start in (0, 50)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert len(Registry(tmp_path, "ckpt").list()) == 100


def _add_same_ids(state_dir: str, writer: int, barrier) -> None:
    registry = Registry(state_dir, "ckpt")
    barrier.wait(timeout=60)
    for i in range(100):
        registry.add([info(f"same{i:03d}", float(writer), f"written by {writer}")])


def test_two_processes_creating_the_same_ids_at_once_leave_one_whole_record_each(tmp_path):
    Registry(tmp_path, "ckpt")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    writers = [ctx.Process(target=_add_same_ids, args=(str(tmp_path), k, barrier)) for k in (1, 2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0], "a concurrent insert of an existing id must not fail"
    records = Registry(tmp_path, "ckpt").list()
    assert sorted(r.adapter_id for r in records) == [f"same{i:03d}" for i in range(100)], "one row per id"
    for record in records:  # the first writer's row, whole: never fields of both
        assert record.instruction == f"written by {int(record.created_at)}"


PINNED_INSTRUCTION = "Sort the numbers from smallest to largest."
PINNED_ID = "42e0ebf71aacc60d25eb933de804872f"
"""The id of PINNED_INSTRUCTION on the shipped checkpoints/tiny. Ids are what clients keep and the
registry is keyed by: if this changes, every stored id of the shipped checkpoint is invalid."""


def test_the_adapter_id_in_a_fresh_process_is_the_pinned_one():
    code = (
        "import json, sys, hypernet\n"
        "from hypernet.files import DEFAULT_CHECKPOINT\n"
        "from hypernet.model import adapter_id\n"
        "from serving.checkpoint import read_checkpoint\n"
        "text = sys.argv[1]\n"
        "print(json.dumps([hypernet.load().adapter(text).adapter_id,\n"
        "                  adapter_id(read_checkpoint(DEFAULT_CHECKPOINT).fingerprint, text)]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, PINNED_INSTRUCTION], capture_output=True, text=True, check=True)
    model_id, server_id = json.loads(result.stdout.strip().splitlines()[-1])
    assert model_id == PINNED_ID, "adapter ids of the shipped checkpoint changed: stored ids no longer resolve"
    assert server_id == PINNED_ID, "the torch-free fingerprint of the HTTP processes disagrees with the model's"
