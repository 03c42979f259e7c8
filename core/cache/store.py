"""CacheStore: exact and semantic response cache on chromadb.

Layout
- One collection per partition (keys.partition_name: model x tenant x
  answer-changing params). Lookups never use ``where`` filters: measured
  0.3-1 s per filtered query at 100k rows against ~2 ms unfiltered.
- An entry's id is the request's exact key, so an exact hit is a get by id
  in the same collection the semantic search uses. Requests without an
  embedding (multi-turn chat, embeddings) go to ``<partition>.x`` with a
  dummy 1-d vector: they are only ever fetched by id.
- document = response body (JSON); metadata = prompt (for the guard),
  created_at, expires_at (wall clock, so TTL survives restarts), model.
- Collection metadata carries ``cache=response-cache`` and the model: that is
  the index used by invalidate(model) and to ignore foreign collections on a
  shared chroma server.

Every public call is bounded by a timeout and a circuit breaker (calls.py);
on failure it counts an error and returns None/False/0, and the caller
serves uncached.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Flag, auto
from typing import IO, Any, Literal

import numpy as np

from core.cache import align, guard, slots
from core.cache.calls import CallRunner, StoreError, StoreTimeout, StoreUnavailable
from core.cache.config import CacheConfig
from core.cache.keys import RequestKeys

log = logging.getLogger(__name__)

MARKER = "response-cache"
EXACT_SUFFIX = ".x"
_DUMMY_VECTOR = [1.0]  # exact-only entries are fetched by id, never searched
_PARTITION_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{1,59}[a-zA-Z0-9]$")
_DELETE_CHUNK = 1000  # ids per delete call: stays far below sqlite's variable limit
_NEGATIVE_TTL_S = 5.0  # server mode: how long "partition does not exist" is believed


class LookupMode(Flag):
    EXACT = auto()  # by the request's exact key
    SEMANTIC = auto()  # nearest neighbours over the threshold, checked by the guard
    EXACT_THEN_SEMANTIC = EXACT | SEMANTIC


class StoreLocked(RuntimeError):
    """Another process owns this embedded store (one process per data_dir)."""


@dataclass(frozen=True, slots=True)
class CacheHit:
    kind: Literal["exact", "semantic"]
    body: dict[str, Any]  # the stored response, OpenAI shape
    similarity: float  # 1.0 for exact hits
    entry_id: str
    prompt: str  # the stored prompt that matched
    expires_at: float = 0.0  # wall clock, from the entry's metadata


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int  # exact after purge_expired(), approximate in between
    partitions: int
    hits_exact: int
    hits_semantic: int
    misses: int
    errors: int  # failed, timed out or skipped calls: served uncached
    timeouts: int
    guard_rejects: int  # neighbours over the threshold rejected by the guard
    puts: int
    evictions: int
    expired: int  # entries removed by purge_expired()


@dataclass(slots=True)
class _Partition:
    name: str
    model: str
    count: int
    last_used: float
    collection: Any = None  # chromadb Collection, resolved lazily
    last_hit: dict[str, float] = field(default_factory=dict)  # entry id -> time, for LRU


class CacheStore:
    """Response cache on chromadb; see the module docstring for the layout."""

    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.time,
                 token_encoder: align.TokenEncoder | None = None) -> None:
        """token_encoder: the prompts' token vectors for the second stage (config.rescore)."""
        if config.rescore and config.guard and token_encoder is None:
            raise ValueError("rescore needs a token_encoder (core.embedder.Embedder.embed_tokens)")
        self.config = config
        self._clock = clock
        self._token_encoder = token_encoder
        self._runner = CallRunner(config.workers, config.cooldown_s)
        self._lock = threading.RLock()
        self._client: Any = None
        self._parts: dict[str, _Partition] | None = None  # None: index not loaded yet
        self._absent: dict[str, float] = {}  # server mode negative cache
        self._counters = dict.fromkeys(
            ("hits_exact", "hits_semantic", "misses", "errors", "timeouts", "guard_rejects",
             "puts", "evictions", "expired"), 0,
        )  # fmt: skip
        self._lock_file: IO[str] | None = None
        if config.embedded:
            # Embedded chromadb is only coherent inside one process: a second
            # process never sees the first one's new vectors. Fail loudly.
            self._lock_file = _lock_dir(config)
            try:
                self._connect()
            except BaseException:
                self._runner.close()
                self._release_lock()
                raise
        else:  # best effort, without waiting: a server that is down now is retried on use
            self._runner.submit(self._connect).add_done_callback(self._connected)

    def _connected(self, attempt: Future) -> None:
        if not attempt.cancelled() and attempt.exception() is not None:
            log.warning("cache store %s:%s unreachable (%s); will retry", self.config.host,
                        self.config.port, attempt.exception())

    # ---------------------------------------------------------------- lookups

    async def lookup(
        self,
        keys: RequestKeys,
        mode: LookupMode = LookupMode.EXACT_THEN_SEMANTIC,
        embedding: Sequence[float] | np.ndarray | None = None,
        threshold: float | None = None,
    ) -> CacheHit | None:
        """The request's entry by its exact key, and/or the nearest neighbour over ``threshold``
        that passes the guard (needs ``embedding`` and the keys' semantic_text).

        Requests with a semantic_text live in their partition's semantic collection, so an
        exact hit there needs no embedding; the others in its exact-only one.
        Returns None on a miss and on any store failure (counted in errors).
        """
        name = _collection_name(keys.partition, bool(keys.semantic_text))
        key = keys.exact if LookupMode.EXACT in mode else None
        vector = (_vector(embedding) if LookupMode.SEMANTIC in mode and embedding is not None
                  else None)
        limit = self.config.threshold if threshold is None else threshold
        try:
            hit, rejects = await self._runner.call(
                lambda: self._lookup(key, name, vector, keys.semantic_text, limit), self.config.timeout_s)
        except StoreError as exc:
            self._failed("lookup", exc)
            return None
        return self._count_lookup(hit, rejects)

    async def lookup_embedding(
        self, keys: RequestKeys, embed: Callable[[str], np.ndarray]
    ) -> tuple[CacheHit | None, np.ndarray | None]:
        """Exact, then on a miss the prompt embedded by ``embed`` and the semantic try, all in
        one call on a store worker: one thread hop where lookup(EXACT), an embedding on another
        thread and lookup(SEMANTIC) take three (measured ~5 ms of a ~16 ms lookup on 2 cores).
        Returns the embedding too (to store the answer under); None after an exact hit, and
        (hit and embedding) on any failure, the embedding's included.
        """
        name = _collection_name(keys.partition, bool(keys.semantic_text))
        made: list[np.ndarray] = []

        def embedded(text: str) -> list[float]:
            made.append(embed(text))
            return _vector(made[-1])

        try:
            hit, rejects = await self._runner.call(
                lambda: self._lookup(keys.exact, name, None, keys.semantic_text, self.config.threshold,
                                     embedded), 2 * self.config.timeout_s)  # and as much for the encoder
        except StoreError as exc:
            self._failed("lookup", exc)
            return None, None
        return self._count_lookup(hit, rejects), (made[0] if made and hit is None else None)

    def _lookup(
        self, key: str | None, name: str, vector: list[float] | None, prompt: str | None, threshold: float,
        embed: Callable[[str], list[float]] | None = None,
    ) -> tuple[CacheHit | None, int]:
        from chromadb.errors import NotFoundError

        part = self._resolve(name)
        if part is None:
            return None, 0
        now = self._clock()
        try:
            # key None: a semantic-only lookup (deployments look up exact first)
            got = (part.collection.get(ids=[key], include=["documents", "metadatas"]) if key is not None
                   else {"ids": []})
            if got["ids"] and _alive(got["metadatas"][0], now):
                self._touch(part, key, now)
                meta = got["metadatas"][0]
                return CacheHit(
                    "exact", json.loads(got["documents"][0]), 1.0, key, str(meta.get("prompt", "")),
                    float(meta["expires_at"]),
                ), 0
            if vector is None and embed is not None and prompt is not None:
                vector = embed(prompt)  # lookup_embedding: only now that the exact try missed
            if vector is None or prompt is None:
                # without the prompt the guard cannot run: no semantic answer
                return None, 0
            res = part.collection.query(
                query_embeddings=[vector],
                n_results=self.config.n_results,
                include=["documents", "metadatas", "distances"],
            )
        except NotFoundError:  # invalidated or purged meanwhile: a miss, not a failure
            self._forget(name)
            return None, 0
        rejects = 0
        candidates = []  # nearest first: (id, similarity, document, metadata, stored prompt)
        for entry_id, dist, doc, meta in zip(
            res["ids"][0], res["distances"][0], res["documents"][0], res["metadatas"][0], strict=True
        ):
            similarity = 1.0 - float(dist)
            # the second stage takes a trivial edit (typos, framing) from a lower cosine on
            if similarity < (min(threshold, align.TRIVIAL_MIN_COSINE) if self._rescoring else threshold):
                break  # results come nearest first
            if not _alive(meta, now):
                continue
            stored_prompt = str(meta.get("prompt", ""))
            ok = True
            if self.config.guard:
                ok, reason = guard.check(prompt, stored_prompt)
                # a soft refusal (one word replaced) is the second stage's to decide, an entity
                # refusal a trivial edit's (a mistyped name, a context sentence naming one)
                if not ok and not (self._rescoring and (guard.soft(reason) or (
                        guard.yields_to_trivial(reason) and slots.trivial_edit(prompt, stored_prompt)))):
                    rejects += 1
                    log.debug(
                        "guard rejected %.3f match %r ~ %r: %s", similarity, prompt, stored_prompt, reason
                    )
                    continue
            candidates.append((entry_id, similarity, doc, meta, stored_prompt, ok))
        if candidates and self._rescoring:
            mine, theirs = self._token_vectors(prompt, candidates)
            kept = [c for c, tv in zip(candidates, theirs, strict=True)
                    if align.accepts(c[1], c[5], mine, tv, texts=(prompt, c[4]), min_cosine=threshold)]
            rejects += len(candidates) - len(kept)
            candidates = kept
        if not candidates:
            return None, rejects
        entry_id, similarity, doc, meta, stored_prompt, _ = candidates[0]
        self._touch(part, entry_id, now)
        return CacheHit("semantic", json.loads(doc), similarity, entry_id, stored_prompt,
                        float(meta["expires_at"])), rejects

    @property
    def _rescoring(self) -> bool:
        return self.config.rescore and self.config.guard

    def _token_vectors(self, prompt: str, candidates: list[tuple]) -> tuple[align.TokenVectors,
                                                                           list[align.TokenVectors]]:
        """The second stage's token vectors: the prompt's (the deployment's lookup remembered
        them in its CachedEncoder, so no encoder run) and each candidate's, unpacked from the
        entry where put stored them; only entries stored without them are encoded."""
        stored: list[align.TokenVectors | None] = []
        for c in candidates:
            try:
                stored.append(align.unpack(c[3]["tokens"]) if c[3].get("tokens") else None)
            except ValueError:
                stored.append(None)
        missing = [c[4] for c, tv in zip(candidates, stored, strict=True) if tv is None]
        encoded = iter(self._token_encoder([prompt, *missing]))
        mine = next(encoded)
        return mine, [tv if tv is not None else next(encoded) for tv in stored]

    def _packed_tokens(self, text: str) -> str | None:
        """An entry's token vectors for its metadata (None without the second stage or when the
        encoder fails: the lookup then encodes the stored prompt itself)."""
        if not self._rescoring or not text:
            return None
        try:
            return align.pack(self._token_encoder([text])[0])
        except Exception as exc:  # noqa: BLE001 - an optimisation; storing must not fail for it
            log.warning("token vectors not stored: %s", exc)
            return None

    def _count_lookup(self, hit: CacheHit | None, rejects: int) -> CacheHit | None:
        with self._lock:
            self._counters["guard_rejects"] += rejects
            key = "misses" if hit is None else f"hits_{hit.kind}"
            self._counters[key] += 1
        return hit

    # ------------------------------------------------------------------ puts

    async def put(
        self,
        keys: RequestKeys,
        response_body: Mapping[str, Any],
        embedding: Sequence[float] | np.ndarray | None = None,
        ttl_s: float | None = None,
        *,
        model: str,
    ) -> bool:
        """Store a response; True if stored. Evicts when a bound is exceeded.

        Requests with a semantic_text are stored with their embedding (searchable), the others
        exact-only. Call it off the response path: a write waits for sqlite's commit.
        """
        ttl = self.config.ttl_s if ttl_s is None else ttl_s
        if ttl <= 0:
            raise ValueError("ttl_s must be > 0")
        semantic = bool(keys.semantic_text)
        if semantic == (embedding is None):
            raise ValueError("an embedding goes with, and only with, keys that have a semantic_text")
        name = _collection_name(keys.partition, semantic)
        vector = _vector(embedding) if semantic else _DUMMY_VECTOR
        body = json.dumps(response_body, separators=(",", ":"), ensure_ascii=False)  # caller bugs raise here
        try:
            part = await self._runner.call(
                lambda: self._put(keys.exact, name, vector, keys.semantic_text or "", body, ttl, model,
                                  self._packed_tokens(keys.semantic_text or "") if semantic else None),
                self.config.write_timeout_s)
        except StoreError as exc:
            self._failed("put", exc)
            return False
        if self._over_bounds(part):
            try:
                await self._runner.call(lambda: self._enforce_bounds(part), self.config.maintenance_timeout_s)
            except StoreError as exc:
                self._failed("evict", exc)
        return True

    def _put(
        self, key: str, name: str, vector: list[float], prompt: str, body: str, ttl: float, model: str,
        tokens: str | None = None,
    ) -> _Partition:
        from chromadb.errors import NotFoundError

        now = self._clock()
        meta = {"prompt": prompt, "created_at": now, "expires_at": now + ttl, "model": model}
        if tokens:
            meta["tokens"] = tokens  # align.pack: the second stage reads it instead of encoding
        for attempt in (1, 2):
            part = self._resolve(name, create_for_model=model)
            assert part is not None
            try:
                part.collection.upsert(ids=[key], embeddings=[vector], documents=[body], metadatas=[meta])
                break
            except NotFoundError:
                self._forget(name)  # dropped meanwhile (invalidate/purge): recreate once
                if attempt == 2:
                    raise
        with self._lock:
            part.count += 1  # may overcount an overwrite; recounted before evicting
            part.last_used = now
            self._counters["puts"] += 1
        return part

    async def put_many(self, partition: str,
                       entries: Sequence[tuple[str, np.ndarray, str, Mapping[str, Any]]],
                       *, model: str, ttl_s: float | None = None, chunk: int = 5000,
                       token_vectors: Sequence[align.TokenVectors] | None = None) -> int:
        """Bulk upsert of (exact_key, embedding, prompt, body) into one semantic partition
        (warming a cache, benchmarks). No bound nor deadline here; returns entries written.
        token_vectors (one per entry, e.g. from Embedder.embed_with_tokens) are stored for the
        second stage as put stores them; without them its lookups encode these entries."""
        if token_vectors is not None and len(token_vectors) != len(entries):
            raise ValueError("one token_vectors per entry")
        return await asyncio.to_thread(self._put_many, partition, entries, model, ttl_s, chunk, token_vectors)

    def _put_many(self, partition: str, entries: Sequence[tuple[str, np.ndarray, str, Mapping[str, Any]]],
                  model: str, ttl_s: float | None, chunk: int,
                  token_vectors: Sequence[align.TokenVectors] | None = None) -> int:
        ttl = self.config.ttl_s if ttl_s is None else ttl_s
        part = self._resolve(_collection_name(partition, True), create_for_model=model)
        assert part is not None
        now = self._clock()
        for start in range(0, len(entries), chunk):
            rows = entries[start:start + chunk]
            metas = [{"prompt": prompt, "created_at": now, "expires_at": now + ttl, "model": model}
                     for _, _, prompt, _ in rows]
            if token_vectors is not None and self._rescoring:
                for meta, tv in zip(metas, token_vectors[start:start + chunk], strict=True):
                    meta["tokens"] = align.pack(tv)
            part.collection.upsert(
                ids=[key for key, _, _, _ in rows],
                embeddings=[_vector(vec) for _, vec, _, _ in rows],
                documents=[json.dumps(body, separators=(",", ":")) for _, _, _, body in rows],
                metadatas=metas)
        with self._lock:
            part.count += len(entries)
            self._counters["puts"] += len(entries)
        return len(entries)

    def _over_bounds(self, part: _Partition) -> bool:
        with self._lock:
            n_parts = len(self._parts or {})
        return part.count > self.config.max_entries_per_partition or n_parts > self.config.max_partitions

    def _enforce_bounds(self, part: _Partition) -> int:
        evicted = 0
        if part.count > self.config.max_entries_per_partition:
            evicted += self._evict_entries(part)
        with self._lock:
            parts = dict(self._parts or {})
        excess = len(parts) - self.config.max_partitions
        if excess > 0:
            # drop whole least-recently-used partitions, never the one just written
            victims = sorted((p for p in parts.values() if p is not part), key=lambda p: p.last_used)
            for victim in victims[:excess]:
                evicted += max(victim.count, 0)
                self._drop_collection(victim.name)
        with self._lock:
            self._counters["evictions"] += evicted
        return evicted

    def _evict_entries(self, part: _Partition) -> int:
        """Delete expired entries, then least recently used ones, to (1 - evict_fraction) x bound.

        Recency is the last hit seen by this process, else the write time: LRU
        within a process lifetime, insertion order across restarts.
        """
        col = part.collection
        actual = col.count()
        bound = self.config.max_entries_per_partition
        if actual <= bound:
            part.count = actual
            return 0
        rows = col.get(include=["metadatas"])
        now = self._clock()
        target = int(bound * (1.0 - self.config.evict_fraction))
        expired = [i for i, m in zip(rows["ids"], rows["metadatas"], strict=True) if not _alive(m, now)]
        dead = set(expired)
        live = sorted(
            (max(float(m.get("created_at", 0.0)), part.last_hit.get(i, 0.0)), i)
            for i, m in zip(rows["ids"], rows["metadatas"], strict=True)
            if i not in dead
        )
        victims = expired + [i for _, i in live[: max(0, len(live) - target)]]
        _delete_ids(col, victims)
        with self._lock:
            part.count = actual - len(victims)
            for i in victims:
                part.last_hit.pop(i, None)
        return len(victims)

    # ----------------------------------------------------------- maintenance

    async def purge_expired(self) -> int:
        """Delete expired entries and empty partitions; recount entries. For a periodic task."""
        try:
            return await self._runner.call(self._purge, self.config.maintenance_timeout_s)
        except StoreError as exc:
            self._failed("purge", exc)
            return 0

    def _purge(self) -> int:
        from chromadb.errors import NotFoundError

        self._connect()
        self._load_index()
        now = self._clock()
        purged = 0
        with self._lock:
            parts = list((self._parts or {}).values())
        for part in parts:
            try:
                col = self._collection(part)
                # a where filter is fine here: this is the periodic task, not the hot path
                ids = col.get(where={"expires_at": {"$lte": now}}, include=[])["ids"]
                _delete_ids(col, ids)
                purged += len(ids)
                part.count = col.count()
                for i in ids:
                    part.last_hit.pop(i, None)
                if part.count == 0:
                    self._drop_collection(part.name)  # keeps the number of collections bounded
            except NotFoundError:
                self._forget(part.name)
        with self._lock:
            self._counters["expired"] += purged
        return purged

    async def invalidate(self, model: str | None = None) -> int:
        """Drop every entry, or one model's; returns how many entries were dropped (-1: store failed)."""
        try:
            return await self._runner.call(lambda: self._invalidate(model), self.config.maintenance_timeout_s)
        except StoreError as exc:
            self._failed("invalidate", exc)
            return -1

    def _invalidate(self, model: str | None) -> int:
        # refresh first: on a shared server other replicas created partitions too
        self._connect()
        self._load_index()
        with self._lock:
            victims = [p for p in (self._parts or {}).values() if model is None or p.model == model]
        dropped = 0
        for part in victims:
            dropped += self._drop_collection(part.name)
        return dropped

    def stats(self) -> CacheStats:
        with self._lock:
            parts = list((self._parts or {}).values())
            return CacheStats(
                entries=sum(max(p.count, 0) for p in parts), partitions=len(parts), **self._counters
            )

    def close(self) -> None:
        """Release the worker pool, the client and the data_dir lock. Idempotent."""
        self._runner.close()
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # closing must not fail shutdown
                log.debug("closing chromadb client: %s", exc)
        self._release_lock()

    def __enter__(self) -> CacheStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- plumbing

    def _connect(self) -> Any:
        """The chromadb client, created on first use (server mode may start down)."""
        with self._lock:
            if self._client is None:
                import chromadb
                from chromadb.config import Settings

                settings = Settings(anonymized_telemetry=False)
                cfg = self.config
                if cfg.embedded:
                    self._client = chromadb.PersistentClient(path=str(cfg.data_dir), settings=settings)
                else:
                    client = chromadb.HttpClient(
                        host=cfg.host or "localhost", port=cfg.port, settings=settings
                    )
                    _bound_http_timeout(client, cfg.maintenance_timeout_s)
                    self._client = client
            if self._parts is None:
                self._load_index()
            return self._client

    def _load_index(self) -> None:
        """Read our collections (marker in their metadata) from the store."""
        client = self._client
        with self._lock:
            before = dict(self._parts or {})
        found: dict[str, _Partition] = {}
        for col in client.list_collections():
            meta = col.metadata or {}
            if meta.get("cache") != MARKER:
                continue  # a shared server may hold other applications' collections
            part = before.get(col.name)
            if part is None:
                handle = client.get_collection(col.name, embedding_function=None)
                part = _Partition(
                    col.name, str(meta.get("model", "")), handle.count(),
                    float(meta.get("created_at", 0.0)), handle,
                )  # fmt: skip
            found[col.name] = part
        with self._lock:
            # keep partitions that puts created while we were listing
            added = {n: p for n, p in (self._parts or {}).items() if n not in before}
            self._parts = {**found, **added}

    def _resolve(self, name: str, create_for_model: str | None = None) -> _Partition | None:
        """The partition called ``name``; created when ``create_for_model`` is given."""
        self._connect()
        with self._lock:
            part = self._parts.get(name) if self._parts is not None else None
            if part is not None and part.collection is not None:
                return part
        if part is not None:
            self._collection(part)
            return part
        if create_for_model is None:
            if self.config.embedded:
                return None  # the index of the owning process is complete
            return self._lookup_remote(name)
        col = self._client.get_or_create_collection(
            name,
            embedding_function=None,  # never chromadb's default: it downloads a model
            configuration={"hnsw": {"space": "cosine"}},
            metadata={"cache": MARKER, "model": create_for_model, "created_at": self._clock()},
        )
        count = col.count()  # another replica may have created it already
        with self._lock:
            assert self._parts is not None
            part = self._parts.setdefault(name, _Partition(name, create_for_model, count, self._clock()))
            part.collection = col
            self._absent.pop(name, None)
        return part

    def _lookup_remote(self, name: str) -> _Partition | None:
        """Server mode: another replica may have created the partition."""
        from chromadb.errors import NotFoundError

        if self._absent.get(name, 0.0) > time.monotonic():
            return None
        try:
            col = self._client.get_collection(name, embedding_function=None)
        except NotFoundError:
            self._absent[name] = time.monotonic() + _NEGATIVE_TTL_S
            return None
        meta = col.metadata or {}
        if meta.get("cache") != MARKER:
            return None
        part = _Partition(name, str(meta.get("model", "")), col.count(), self._clock(), col)
        with self._lock:
            assert self._parts is not None
            return self._parts.setdefault(name, part)

    def _collection(self, part: _Partition) -> Any:
        if part.collection is None:
            part.collection = self._client.get_collection(part.name, embedding_function=None)
            if part.count < 0:
                part.count = part.collection.count()
        return part.collection

    def _drop_collection(self, name: str) -> int:
        """Delete a partition's collection; returns its entry count."""
        from chromadb.errors import NotFoundError

        try:
            count = self._client.get_collection(name, embedding_function=None).count()
            self._client.delete_collection(name)
        except NotFoundError:
            count = 0
        self._forget(name)
        return count

    def _forget(self, name: str) -> None:
        with self._lock:
            if self._parts is not None:
                self._parts.pop(name, None)

    def _touch(self, part: _Partition, entry_id: str, now: float) -> None:
        with self._lock:
            part.last_used = now
            part.last_hit[entry_id] = now

    def _failed(self, what: str, exc: StoreError) -> None:
        with self._lock:
            self._counters["errors"] += 1
            if isinstance(exc, StoreTimeout):
                self._counters["timeouts"] += 1
        # the breaker skips calls while open: log those quietly, real failures loudly
        level = logging.DEBUG if isinstance(exc, StoreUnavailable) else logging.WARNING
        log.log(level, "cache %s failed, serving uncached: %s", what, exc)

    def _release_lock(self) -> None:
        lock_file, self._lock_file = self._lock_file, None
        if lock_file is not None:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
            lock_file.close()


def _collection_name(partition: str, semantic: bool) -> str:
    if not _PARTITION_RE.match(partition):
        raise ValueError(f"invalid partition name {partition!r}: use keys.partition_name()")
    return partition if semantic else partition + EXACT_SUFFIX


def _vector(embedding: Sequence[float] | np.ndarray) -> list[float]:
    vec = np.asarray(embedding, dtype=np.float32).ravel()
    if vec.size == 0 or not np.all(np.isfinite(vec)):
        raise ValueError("embedding must be a non-empty finite vector")
    return vec.tolist()


def _alive(meta: Mapping[str, Any] | None, now: float) -> bool:
    return meta is not None and float(meta.get("expires_at", 0.0)) > now


def _delete_ids(col: Any, ids: list[str]) -> None:
    for start in range(0, len(ids), _DELETE_CHUNK):
        col.delete(ids=ids[start : start + _DELETE_CHUNK])


def _lock_dir(config: CacheConfig) -> IO[str]:
    assert config.data_dir is not None
    config.data_dir.mkdir(parents=True, exist_ok=True)
    lock_file = open(config.data_dir / ".cache.lock", "a+")  # noqa: SIM115 - held for the store's life
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise StoreLocked(
            f"{config.data_dir} is owned by another process: run one cache replica per data_dir, "
            "or a chroma server (host=...) for several"
        ) from None
    return lock_file


def _bound_http_timeout(client: Any, timeout_s: float) -> None:
    """Give chromadb's httpx session a timeout (it has none by default).

    The caller's deadline is enforced by CallRunner either way; this stops
    worker threads from hanging forever on a dead connection.
    """
    try:
        import httpx

        client._server._session.timeout = httpx.Timeout(timeout_s)
    except AttributeError:  # private layout changed: CallRunner still bounds callers
        log.debug("could not set chromadb http timeout")
