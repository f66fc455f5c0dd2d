"""The adapter registry: id -> instruction and metadata, shared by every process of a server.

An adapter is a pure function of (checkpoint, instruction), so the registry stores the
instruction, not the weights: any worker, including one started after a restart, rebuilds
the same tensors from it. SQLite in WAL mode lets the HTTP processes read while a worker
writes. Each operation opens its own short-lived connection: the HTTP processes are forked
by LitServe and a SQLite connection must never cross a fork, and a connection costs ~0.1 ms.
Rows are keyed by the checkpoint fingerprint too, so one state directory can outlive a
checkpoint change without serving ids that no longer mean anything.

The registry is bounded: it keeps the `max_adapters` most recently used rows of its checkpoint.
Every read by id (a worker resolving its batch, a metadata or PEFT request) stamps `last_used`,
and every insert evicts the least recently used rows beyond the bound in the same transaction.
An evicted id is unknown (404) until its instruction is posted again, which re-creates the same
id; workers check the registry per batch, so they stop serving it at once, as after a DELETE.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
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
    created_at REAL NOT NULL,
    last_used REAL NOT NULL
);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS adapters_by_use ON adapters (checkpoint, last_used);
DROP INDEX IF EXISTS adapters_by_checkpoint;
"""
_COLUMNS = "adapter_id, instruction, rank, target_modules, num_parameters, created_at"
_STORED_ARCHIVES = "exports"
"""Where servers before the bound kept one PEFT archive per download, forever (serving.archive)."""


class Registry:
    def __init__(self, state_dir: Path, checkpoint_fingerprint: str, max_adapters: int | None = None) -> None:
        """`max_adapters`: rows kept for this checkpoint (None: unbounded, for tools that only read)."""
        self.path = Path(state_dir) / REGISTRY_FILE
        self.checkpoint = checkpoint_fingerprint
        self.max_adapters = max_adapters
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: set once per file
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(adapters)")}
            if "last_used" not in columns:
                self._migrate(db)
            db.executescript(_INDEXES)

    def _migrate(self, db: sqlite3.Connection) -> None:
        """A registry file of an unbounded server: its rows count as used when created, and the
        archives that server stored per download go (they are built per request now)."""
        db.execute("ALTER TABLE adapters ADD COLUMN last_used REAL NOT NULL DEFAULT 0")
        db.execute("UPDATE adapters SET last_used = created_at")
        shutil.rmtree(self.path.parent / _STORED_ARCHIVES, ignore_errors=True)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One transaction on a fresh connection; waits up to 30 s for a concurrent writer."""
        with closing(sqlite3.connect(self.path, timeout=30.0)) as db:
            db.execute("PRAGMA synchronous=NORMAL")
            with db:
                yield db

    def add(self, records: Iterable[AdapterInfo]) -> None:
        """Insert new ids (an id that exists keeps its first created_at), then evict the least
        recently used rows beyond max_adapters."""
        now = time.time()
        rows = [
            (
                r.adapter_id,
                self.checkpoint,
                r.instruction,
                r.rank,
                json.dumps(r.target_modules),
                r.num_parameters,
                r.created_at,
                now,
            )
            for r in records
        ]
        if rows:
            with self._connect() as db:
                db.executemany(
                    "INSERT OR IGNORE INTO adapters (adapter_id, checkpoint, instruction, rank, target_modules, "
                    "num_parameters, created_at, last_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                if self.max_adapters is not None:
                    db.execute(
                        "DELETE FROM adapters WHERE checkpoint = ? AND adapter_id IN (SELECT adapter_id FROM adapters "
                        "WHERE checkpoint = ? ORDER BY last_used DESC, adapter_id LIMIT -1 OFFSET ?)",
                        (self.checkpoint, self.checkpoint, self.max_adapters),
                    )

    def get(self, adapter_id: str) -> AdapterInfo | None:
        return self.get_many([adapter_id]).get(adapter_id)

    def get_many(self, adapter_ids: Iterable[str]) -> dict[str, AdapterInfo]:
        """The rows of these ids, each stamped as used now: what keeps it from eviction."""
        ids = sorted(set(adapter_ids))
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        where = f"checkpoint = ? AND adapter_id IN ({marks})"
        with self._connect() as db:
            db.execute(f"UPDATE adapters SET last_used = ? WHERE {where}", (time.time(), self.checkpoint, *ids))
            rows = db.execute(f"SELECT {_COLUMNS} FROM adapters WHERE {where}", (self.checkpoint, *ids)).fetchall()
        return {row[0]: _record(row) for row in rows}

    def list(self, limit: int | None = None, after: str | None = None) -> list[AdapterInfo]:
        """Up to `limit` rows (None: all) with ids above `after`, by id: a stable order that a
        paginated walk can resume from an id, even one deleted meanwhile. Listing is no use."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM adapters WHERE checkpoint = ? AND adapter_id > ? ORDER BY adapter_id LIMIT ?",
                (self.checkpoint, after or "", -1 if limit is None else limit),
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
