"""A least-recently-used cache bounded in bytes, one per inference worker.

Adapters differ in size (rank, targets, instruction length for fusion), so a count bound
would say nothing about memory. An evicted adapter is not lost: it is rebuilt from its
instruction on the next request (a few ms on the tiny model).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


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
        while self._bytes + value.nbytes > self.capacity_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes
            self._evictions += 1
        self._items[key] = value
        self._bytes += value.nbytes

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
