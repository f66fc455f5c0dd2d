"""The adapter cache: least recently used out first, bounded in bytes, counted."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from serving.cache import LRUCache


@dataclass(frozen=True)
class Blob:
    nbytes: int


def test_evicts_least_recently_used_to_stay_within_bytes():
    cache: LRUCache[Blob] = LRUCache(capacity_bytes=100)
    cache.put("a", Blob(40))
    cache.put("b", Blob(40))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", Blob(40))  # 120 > 100: b goes, not a
    assert "b" not in cache and "a" in cache and "c" in cache
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions, stats.bytes, stats.entries) == (1, 0, 1, 80, 2)
    assert cache.get("b") is None and cache.stats().misses == 1


def test_replacing_and_discarding_keep_the_byte_count_exact():
    cache: LRUCache[Blob] = LRUCache(capacity_bytes=100)
    cache.put("a", Blob(30))
    cache.put("a", Blob(50))
    assert cache.stats().bytes == 50 and len(cache) == 1
    cache.discard("a")
    cache.discard("missing")
    assert cache.stats().bytes == 0 and cache.stats().evictions == 0, "a deletion is not an eviction"


def test_a_value_larger_than_the_cache_is_served_but_not_stored():
    cache: LRUCache[Blob] = LRUCache(capacity_bytes=100)
    cache.put("small", Blob(10))
    cache.put("huge", Blob(101))
    assert "huge" not in cache and "small" in cache and cache.stats().evictions == 0


def test_negative_capacity_is_refused():
    with pytest.raises(ValueError):
        LRUCache(-1)
