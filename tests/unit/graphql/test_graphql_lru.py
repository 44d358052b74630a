"""The bounded LRU map behind the analysis caches."""

from __future__ import annotations

import threading

import pytest

from sidecar.graphql.lru import LRUCache


def test_least_recently_used_is_dropped_first() -> None:
    cache: LRUCache[int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the oldest
    cache.put("c", 3)
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)
    assert len(cache) == 2


def test_put_replaces_and_refreshes() -> None:
    cache: LRUCache[int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b")) == (10, None)


def test_clear() -> None:
    cache: LRUCache[int] = LRUCache(3)
    cache.put("a", 1)
    cache.clear()
    assert cache.get("a") is None
    assert len(cache) == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        LRUCache(0)


def test_concurrent_use_keeps_the_bound() -> None:
    cache: LRUCache[int] = LRUCache(50)

    def work(offset: int) -> None:
        for index in range(2000):
            cache.put((offset, index % 120), index)
            cache.get((offset, (index * 7) % 120))

    threads = [threading.Thread(target=work, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 50
