"""Response-cache deployment: the chromadb store (exact + semantic) in front of the models.

The embedded store may be opened by one process only, so this deployment runs one replica
by default; with a `chroma run` server (host set) it can scale out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator
from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle

from core.cache import CacheConfig, CacheStore, LookupMode, RequestKeys, align
from core.embedder import Embedder

LOOKUP_BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 250, 500]


class CacheArgs(CacheConfig):
    """`cache:` in the app's args: the store's CacheConfig plus this deployment's own settings.

    Where the store lives is resolved in the replica (store_config), not when the app is built:
    CHROMA_HOST differs between the head and the workers, and so may the home directory.
    """

    enabled: bool = True
    purge_interval_s: float = Field(60.0, gt=0.0)
    embed_in_cache: bool = Field(True, description="embed lookup prompts in the cache replica (no hop "
                                                   "to the embedder deployment: ~7 ms less per miss)")
    near_cache_entries: int = Field(4096, ge=0, description="exact hits kept in each ingress replica "
                                                            "(no hop to the store); 0 = off")

    @model_validator(mode="after")
    def _one_location(self) -> CacheArgs:  # replaces CacheConfig's: neither set = the default dir
        if self.data_dir is not None and self.host is not None:
            raise ValueError("set at most one of data_dir (embedded) or host (server)")
        return self

    def store_config(self) -> CacheConfig:
        """The store's config, located: host (or CHROMA_HOST) is a server, else a directory."""
        store = self.model_dump(include=set(CacheConfig.model_fields), exclude={"data_dir", "host"})
        host = self.host or os.environ.get("CHROMA_HOST")
        if host:
            return CacheConfig(**{**store, "host": host,
                                  "port": int(os.environ.get("CHROMA_PORT", self.port))})
        default_dir = Path.home() / ".cache" / "effserve" / "chroma"
        return CacheConfig(**store, data_dir=Path(self.data_dir or default_dir).expanduser())


@serve.deployment(num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
class CacheDeployment:
    def __init__(self, embedder: DeploymentHandle, args: dict) -> None:
        self.args = CacheArgs(**args)
        rescore = self.args.rescore and self.args.guard
        # Lookups embed one short prompt: a local session (1 thread) beats a hop to the embedder
        # deployment plus its batch wait. Answers are stored with the embedding computed here.
        # With the second stage the local graph also returns token vectors (one session for both).
        self.local_embedder = (Embedder.load(threads=1, token_outputs=rescore)
                               if self.args.embed_in_cache or rescore else None)
        self.token_cache = align.CachedEncoder(self.local_embedder.embed_tokens) if rescore else None
        self.store = CacheStore(self.args.store_config(), token_encoder=self.token_cache)
        self.embedder = embedder
        self._epoch, self._invalidations = os.urandom(4).hex(), 0
        self._storing: dict[str, asyncio.Future] = {}  # exact key -> its put, while in flight
        self._invalidated = asyncio.Event()
        self.lookups = metrics.Counter("cache_lookups", description="cache lookups by result",
                                       tag_keys=("result",))
        self.latency = metrics.Histogram("cache_lookup_ms", description="cache lookup latency",
                                         boundaries=LOOKUP_BOUNDARIES_MS)
        self.entries = metrics.Gauge("cache_entries", description="entries in the response cache")
        self.errors = metrics.Gauge("cache_store_errors", description="store calls failed or timed out")
        self._purger = asyncio.get_event_loop().create_task(self._purge_forever())

    async def _purge_forever(self) -> None:
        while True:
            await asyncio.sleep(self.args.purge_interval_s)
            await self.store.purge_expired()
            stats = self.store.stats()
            self.entries.set(stats.entries)
            self.errors.set(stats.errors)

    async def lookup(self, keys: RequestKeys) -> tuple[dict | None, np.ndarray | None]:
        """(hit, embedding): hit = {"kind": "exact"|"semantic", "body": ...} or None.

        Exact first (no embedding needed); the prompt is embedded only for the semantic try,
        and the embedding comes back so the caller can store its answer under it. Embedded here
        (embed_in_cache), all three run in one call on a store worker (one thread hop)."""
        start = time.perf_counter()
        storing = self._storing.get(keys.exact)
        if storing is not None:
            # This very request's answer is being stored (it was asked again as soon as it was
            # answered; Serve's proxy looks up within a few ms): find it rather than miss it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(storing), self.args.timeout_s)
        if self.args.embed_in_cache and self.local_embedder is not None:
            hit, embedding = await self.store.lookup_embedding(keys, self._embed_here)
        else:
            hit, embedding = await self.store.lookup(keys, LookupMode.EXACT), None
            if hit is None and keys.semantic_text:
                embedding = await self._embed(keys.semantic_text)
                hit = await self.store.lookup(keys, LookupMode.SEMANTIC, embedding)
        self.latency.observe((time.perf_counter() - start) * 1000)
        self.lookups.inc(tags={"result": f"hit-{hit.kind}" if hit else "miss"})
        return ({"kind": hit.kind, "body": hit.body, "similarity": hit.similarity,
                 "expires_at": hit.expires_at} if hit else None, embedding)

    async def _embed(self, text: str) -> np.ndarray:
        if self.args.embed_in_cache and self.local_embedder is not None:
            return await asyncio.to_thread(self._embed_here, text)
        vectors, _ = await self.embedder.embed.remote([text])
        return vectors[0]

    def _embed_here(self, text: str) -> np.ndarray:
        """The local session (blocking: a worker thread's)."""
        if self.token_cache is not None:
            # One run gives the prompt's token vectors too: the second stage then encodes only
            # candidates it has not seen.
            vectors, tokens = self.local_embedder.embed_with_tokens([text])
            self.token_cache.remember(text, tokens[0])
            return vectors[0]
        return self.local_embedder.embed([text])[0]

    async def put(self, keys: RequestKeys, embedding: np.ndarray | None, body: dict,
                  model: str) -> float | None:
        """Store an answer; returns when it expires (wall clock), None if it was not stored.
        A lookup of the same key meanwhile waits for it (lookup)."""
        done = self._storing[keys.exact] = asyncio.get_running_loop().create_future()
        try:
            if embedding is None and keys.semantic_text:
                embedding = await self._embed(keys.semantic_text)
            expires_at = time.time() + self.args.ttl_s  # no later than the store's own stamp
            stored = await self.store.put(keys, body, embedding, self.args.ttl_s, model=model)
            return expires_at if stored else None
        finally:
            if self._storing.get(keys.exact) is done:
                del self._storing[keys.exact]
            done.set_result(None)

    async def invalidate(self, model: str | None = None) -> int:
        try:
            return await self.store.invalidate(model)
        finally:  # near caches drop everything, whatever the store managed
            self._invalidations += 1
            self._invalidated.set()
            self._invalidated = asyncio.Event()

    async def invalidations(self, seen: str | None, wait_s: float = 30.0) -> str:
        """Long poll for ingress replicas' near caches: returns this replica's invalidation
        token once it differs from `seen` (or after wait_s). A restarted replica has a new one."""
        token = f"{self._epoch}:{self._invalidations}"
        if token == seen:
            event = self._invalidated
            try:
                await asyncio.wait_for(event.wait(), wait_s)
            except TimeoutError:
                pass
            token = f"{self._epoch}:{self._invalidations}"
        return token

    def stats(self) -> dict:
        return dataclasses.asdict(self.store.stats())

