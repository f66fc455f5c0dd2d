"""A least-recently-used cache bounded in bytes, one per inference worker.

Adapters differ in size (rank, targets, instruction length for fusion), so a count bound
would say nothing about memory. An evicted adapter is not lost: it is rebuilt from its
instruction on the next request (a few ms on the tiny model).

Evictions also hand freed memory back to the system. A worker that keeps meeting new
instructions frees and allocates tensors of ever different shapes (adapters, encodings,
decoding buffers); glibc keeps freed chunks inside its heap for reuse, so the process's RSS
went on growing long after its live memory (model, workspace, this cache) had stopped: measured
with `tagi bench serve --parts memory` and glibc's own counters, about 40 MB of free-but-kept heap
on the tiny checkpoint, which malloc_trim gives back. Evictions are the sign of that churn, so
after one the cache calls malloc_trim, at most once per TRIM_INTERVAL_S (a trim walks the heap).
"""

from __future__ import annotations

import ctypes
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

TRIM_INTERVAL_S = 1.0
"""The shortest time between two malloc_trim calls of one cache."""


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim(pad), or None under a C library without it (musl, macOS): nothing to trim there."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


MALLOC_TRIM = _glibc_malloc_trim()


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


V = TypeVar("V", bound=Sized)


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    bytes: int
    entries: int


class LRUCache(Generic[V]):
    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError("cache capacity must be >= 0 bytes")
        self.capacity_bytes = capacity_bytes
        self._items: OrderedDict[str, V] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0
        self._trimmed_at = -math.inf

    def get(self, key: str) -> V | None:
        """The value, now most recently used; counts a hit or a miss."""
        value = self._items.get(key)
        if value is None:
            self._misses += 1
            return None
        self._hits += 1
        self._items.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        """Store, evicting least recently used entries to fit. A value larger than the whole
        cache is not stored (it would evict everything and then itself)."""
        self.discard(key)
        if value.nbytes > self.capacity_bytes:
            return
        evictions = self._evictions
        while self._bytes + value.nbytes > self.capacity_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes
            self._evictions += 1
        self._items[key] = value
        self._bytes += value.nbytes
        if self._evictions > evictions:
            self._release_freed_memory()

    def _release_freed_memory(self) -> None:
        """malloc_trim(0): free pages anywhere in the heap go back to the system (see the module docstring)."""
        now = time.monotonic()
        if MALLOC_TRIM is not None and now - self._trimmed_at >= TRIM_INTERVAL_S:
            self._trimmed_at = now
            MALLOC_TRIM(0)

    def discard(self, key: str) -> None:
        """Drop an entry that must not be served any more (a deleted adapter): not an eviction."""
        value = self._items.pop(key, None)
        if value is not None:
            self._bytes -= value.nbytes

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self._evictions, self._bytes, len(self._items))
