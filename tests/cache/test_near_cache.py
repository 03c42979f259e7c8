"""The ingress's near cache of exact hits (pure logic, fake clock)."""

from __future__ import annotations

import pytest

from core.cache.near import NearCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_with_the_store_entry():
    clock = Clock()
    near = NearCache(8, clock)
    near.put("a", {"x": 1}, expires_at=1010.0)
    assert near.get("a") == {"x": 1}
    clock.now = 1010.0
    assert near.get("a") is None and len(near) == 0
    near.put("b", {"x": 2}, expires_at=1005.0)  # already expired: not kept
    assert len(near) == 0


def test_least_recently_used_goes_first_beyond_the_bound():
    near = NearCache(2, Clock())
    near.put("a", {}, 2000.0)
    near.put("b", {}, 2000.0)
    near.get("a")  # a is now the most recent
    near.put("c", {}, 2000.0)
    assert near.get("b") is None and near.get("a") is not None and near.get("c") is not None
    assert (near.hits, near.misses) == (3, 1)


def test_clear_and_bounds():
    near = NearCache(4, Clock())
    near.put("a", {}, 2000.0)
    near.clear()
    assert near.get("a") is None
    with pytest.raises(ValueError):
        NearCache(0)
