"""A near cache of exact hits, in the ingress process: an exact hit without a hop to the store.

Measured here over HTTP: a request through proxy + ingress costs ~6 ms, a call to the cache
replica ~4 ms more, the store's lookup by id under 1 ms. So exact hits that skip the call drop
from ~13 ms to the HTTP floor. The near cache only holds what the store holds or held: answers
the store returned as exact hits and answers stored successfully, each with the store entry's
own expiry. Entries go when they expire, least recently used beyond `max_entries`, and all at
once on any invalidation (the owner clears it; see Ingress._follow_invalidations for replicas
that did not receive the DELETE).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class NearCache:
    def __init__(self, max_entries: int = 4096, clock: Callable[[], float] = time.time) -> None:
        """clock: wall time, as the store's expiries are (they survive restarts)."""
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries, self._clock = max_entries, clock
        self._entries: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] <= self._clock():
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: str, body: dict[str, Any], expires_at: float) -> None:
        if expires_at <= self._clock():
            return
        self._entries[key] = (body, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
