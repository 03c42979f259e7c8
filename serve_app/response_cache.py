"""The ingress's side of the response cache: keys, near cache, lookup, store-later, invalidation.

A slow or failing cache never fails a request: lookups give up after CACHE_LOOKUP_TIMEOUT_S and
serve uncached, stores run after the answer was sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass

import numpy as np
from fastapi.responses import JSONResponse, StreamingResponse
from ray.serve.handle import DeploymentHandle

from core.build.artifacts import LLM_ID
from core.cache import RequestKeys, is_cacheable, request_keys
from core.cache.near import NearCache

from .openai_format import Endpoint, Reply
from .schemas import SamplingFields

logger = logging.getLogger("ray.serve")
CACHE_LOOKUP_TIMEOUT_S = 0.5  # a slow or dead cache never holds a request longer than this


@dataclass(frozen=True)
class CachePlan:
    """What the cache does for one request, from its body and Cache-Control header."""

    keys: RequestKeys | None = None  # None: not cacheable, or no-store
    look_up: bool = False  # no-cache: skip the lookup, still store the answer


@dataclass(frozen=True)
class Lookup:
    body: dict | None = None  # the cached answer; None on a miss
    kind: str = "miss"  # "exact" | "semantic" | "miss"
    embedding: np.ndarray | None = None  # the prompt's, computed by the lookup: store under it


def cached_response(endpoint: Endpoint, found: Lookup, stream: bool,
                    include_usage: bool) -> JSONResponse | StreamingResponse:
    """A cached answer in the shape the caller asked for, marked with x-cache (the Ingress and
    Serve's proxy, cache_front.py, answer hits alike)."""
    reply, headers = Reply(endpoint), {"x-cache": f"hit-{found.kind}"}
    if not stream:
        return JSONResponse(reply.replay(found.body), headers=headers)
    return StreamingResponse(reply.replay_events(found.body, include_usage),
                             media_type="text/event-stream", headers=headers)


class BackgroundTasks:
    """Fire-and-forget coroutines, referenced until done (asyncio keeps only weak ones)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def start(self, coro: Coroutine) -> None:
        task = asyncio.get_event_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class ResponseCacheClient:
    def __init__(self, cache: DeploymentHandle, near_cache_entries: int = 0) -> None:
        self.cache = cache
        self.background = BackgroundTasks()
        self.near = NearCache(near_cache_entries) if near_cache_entries else None
        # bumped by every clear: an answer fetched before an invalidation is not kept near after it
        self._epoch = 0
        if self.near is not None:
            self.background.start(self._follow_invalidations())

    def plan(self, headers: Mapping[str, str], endpoint: Endpoint, req: SamplingFields,
             tenant: str) -> CachePlan:
        """no-store skips the cache, no-cache skips the lookup but stores."""
        control = headers.get("cache-control", "").lower()
        payload = req.model_dump(exclude_none=True)
        opt_in = headers.get("x-cache-opt-in", "").lower() in ("1", "true", "yes")
        if "no-store" in control or not is_cacheable(payload, opt_in, endpoint):
            return CachePlan()
        return CachePlan(request_keys(LLM_ID, endpoint, payload, tenant), "no-cache" not in control)

    async def lookup(self, keys: RequestKeys) -> Lookup:
        """This replica's near cache first, then the cache replica (exact, then semantic)."""
        near = self.near.get(keys.exact) if self.near is not None else None
        if near is not None:
            return Lookup(near, "exact")
        epoch = self._epoch
        try:
            hit, embedding = await asyncio.wait_for(self.cache.lookup.remote(keys),
                                                    CACHE_LOOKUP_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any cache failure: serve uncached
            logger.warning("response cache lookup failed, serving uncached: %r", exc)
            return Lookup()
        if hit is None:
            return Lookup(embedding=embedding)
        if hit["kind"] == "exact" and self.near is not None and epoch == self._epoch:
            self.near.put(keys.exact, hit["body"], hit["expires_at"])
        return Lookup(hit["body"], hit["kind"], embedding)

    def store_later(self, keys: RequestKeys, embedding: np.ndarray | None, body: dict) -> None:
        """Cache an answer off the response path."""
        self.background.start(self._store(keys, embedding, body))

    async def _store(self, keys: RequestKeys, embedding: np.ndarray | None, body: dict) -> None:
        epoch = self._epoch
        try:
            expires_at = await self.cache.put.remote(keys, embedding, body, LLM_ID)
        except Exception as exc:  # noqa: BLE001 - the answer was served; only caching failed
            logger.warning("response cache put failed: %r", exc)
            return
        if expires_at is not None and self.near is not None and epoch == self._epoch:
            self.near.put(keys.exact, body, expires_at)

    async def invalidate(self, model: str | None) -> int:
        """Drop cached responses (all, or one model's); -1 when the store could not."""
        self.clear_near()  # this replica's at once; the others hear it from the cache replica
        return await self.cache.invalidate.remote(model)

    def clear_near(self) -> None:
        self._epoch += 1
        if self.near is not None:
            self.near.clear()

    def close(self) -> None:
        """Stop following invalidations (and pending stores): this client is being replaced."""
        self.background.cancel()

    async def _follow_invalidations(self) -> None:
        """Clear the near cache whenever the cache replica invalidates (a DELETE that another
        ingress replica received) or restarts; while it cannot be reached, keep it empty."""
        token = None
        while True:
            try:
                new = await self.cache.invalidations.remote(token)
            except Exception as exc:  # noqa: BLE001 - unreachable: serve nothing we cannot revoke
                self.clear_near()
                logger.warning("cache replica unreachable for invalidations (%r); near cache off", exc)
                token = None
                await asyncio.sleep(1.0)
                continue
            if new != token:
                self.clear_near()
                token = new
