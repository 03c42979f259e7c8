"""Run store calls with a deadline and a circuit breaker.

chromadb calls block (sqlite, HTTP with no timeout): a hung server would hang
the request. Each call runs on a small worker pool and the caller waits at
most ``timeout_s``. After a failure the breaker stays open for ``cooldown_s``
and calls fail at once, so a down store costs one timeout per cooldown, not
one per request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class StoreError(Exception):
    """The store failed, timed out or is being skipped; serve uncached."""


class StoreTimeout(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The breaker is open after a recent failure."""


class Breaker:
    def __init__(self, cooldown_s: float) -> None:
        self._cooldown_s = cooldown_s
        self._open_until = 0.0
        self._lock = threading.Lock()

    def check(self) -> None:
        if time.monotonic() < self._open_until:
            raise StoreUnavailable("store skipped after a recent failure")

    def trip(self) -> None:
        with self._lock:
            self._open_until = time.monotonic() + self._cooldown_s

    def reset(self) -> None:
        with self._lock:
            self._open_until = 0.0


class CallRunner:
    """Run ``fn`` on a worker thread, raise StoreError on failure or deadline."""

    def __init__(self, workers: int, cooldown_s: float) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cache-store")
        self.breaker = Breaker(cooldown_s)

    async def call(self, fn: Callable[[], T], timeout_s: float) -> T:
        """``fn()`` on a worker thread; the event loop waits at most ``timeout_s``."""
        self.breaker.check()
        future = self.submit(fn)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            future.cancel()
            self.breaker.trip()
            raise StoreTimeout(f"store call exceeded {timeout_s:.3g}s") from None
        except StoreError:
            self.breaker.trip()
            raise
        except Exception as exc:
            self.breaker.trip()
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Start ``fn()`` on a worker thread without waiting for it, nor a deadline."""
        try:
            return self._pool.submit(fn)
        except RuntimeError as exc:  # pool shut down: the store is closed
            raise StoreUnavailable("store is closed") from exc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
