"""The adapter registry: id -> instruction and metadata, shared by every process of a server.

An adapter is a pure function of (checkpoint, instruction), so the registry stores the
instruction, not the weights: any worker, including one started after a restart, rebuilds
the same tensors from it. SQLite in WAL mode lets the HTTP processes read while a worker
writes. Each operation opens its own short-lived connection: the HTTP processes are forked
by LitServe and a SQLite connection must never cross a fork, and a connection costs ~0.1 ms.
Rows are keyed by the checkpoint fingerprint too, so one state directory can outlive a
checkpoint change without serving ids that no longer mean anything.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from serving.schemas import AdapterInfo

REGISTRY_FILE = "registry.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS adapters (
    adapter_id TEXT PRIMARY KEY,
    checkpoint TEXT NOT NULL,
    instruction TEXT NOT NULL,
    rank INTEGER NOT NULL,
    target_modules TEXT NOT NULL,
    num_parameters INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS adapters_by_checkpoint ON adapters (checkpoint, created_at);
"""
_COLUMNS = "adapter_id, instruction, rank, target_modules, num_parameters, created_at"


class Registry:
    def __init__(self, state_dir: Path, checkpoint_fingerprint: str) -> None:
        self.path = Path(state_dir) / REGISTRY_FILE
        self.checkpoint = checkpoint_fingerprint
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: set once per file
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One transaction on a fresh connection; waits up to 30 s for a concurrent writer."""
        with closing(sqlite3.connect(self.path, timeout=30.0)) as db:
            db.execute("PRAGMA synchronous=NORMAL")
            with db:
                yield db

    def add(self, records: Iterable[AdapterInfo]) -> None:
        """Insert new ids; an id that exists keeps its first created_at."""
        rows = [
            (r.adapter_id, self.checkpoint, r.instruction, r.rank, json.dumps(r.target_modules), r.num_parameters, r.created_at)
            for r in records
        ]
        if rows:
            with self._connect() as db:
                db.executemany(
                    "INSERT OR IGNORE INTO adapters (adapter_id, checkpoint, instruction, rank, target_modules, "
                    "num_parameters, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )

    def get(self, adapter_id: str) -> AdapterInfo | None:
        return self.get_many([adapter_id]).get(adapter_id)

    def get_many(self, adapter_ids: Iterable[str]) -> dict[str, AdapterInfo]:
        ids = sorted(set(adapter_ids))
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM adapters WHERE checkpoint = ? AND adapter_id IN ({marks})", (self.checkpoint, *ids)
            ).fetchall()
        return {row[0]: _record(row) for row in rows}

    def list(self) -> list[AdapterInfo]:
        """Oldest first."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM adapters WHERE checkpoint = ? ORDER BY created_at, adapter_id", (self.checkpoint,)
            ).fetchall()
        return [_record(row) for row in rows]

    def delete(self, adapter_id: str) -> bool:
        with self._connect() as db:
            cursor = db.execute("DELETE FROM adapters WHERE checkpoint = ? AND adapter_id = ?", (self.checkpoint, adapter_id))
        return cursor.rowcount > 0


def _record(row: tuple) -> AdapterInfo:
    adapter_id, instruction, rank, target_modules, num_parameters, created_at = row
    return AdapterInfo(
        adapter_id=adapter_id,
        instruction=instruction,
        rank=rank,
        target_modules=json.loads(target_modules),
        num_parameters=num_parameters,
        created_at=created_at,
    )
