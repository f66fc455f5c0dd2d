"""The SQLite registry: shared by processes, keyed by checkpoint, first creation wins."""

from __future__ import annotations

import multiprocessing as mp

from serving.registry import Registry
from serving.schemas import AdapterInfo


def info(adapter_id: str, created_at: float = 1.0, instruction: str = "Reverse the list.") -> AdapterInfo:
    return AdapterInfo(adapter_id=adapter_id, instruction=instruction, rank=8, target_modules=["q", "v"],
                       num_parameters=1024, created_at=created_at)


def test_add_get_list_delete(tmp_path):
    registry = Registry(tmp_path, "ckpt-a")
    registry.add([info("id2", 2.0), info("id1", 1.0)])
    registry.add([info("id1", 9.0, "changed")])  # already there: keeps the first record
    assert registry.get("id1") == info("id1", 1.0)
    assert [r.adapter_id for r in registry.list()] == ["id1", "id2"], "oldest first"
    assert set(registry.get_many(["id1", "id2", "nope"])) == {"id1", "id2"}
    assert registry.delete("id1") and not registry.delete("id1")
    assert registry.get("id1") is None


def test_rows_of_another_checkpoint_are_invisible(tmp_path):
    Registry(tmp_path, "ckpt-a").add([info("id1")])
    other = Registry(tmp_path, "ckpt-b")
    assert other.get("id1") is None and other.list() == [] and not other.delete("id1")
    assert Registry(tmp_path, "ckpt-a").get("id1") is not None


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
