"""CacheStore against the real chromadb: embedded (tmp dir) and server (`chroma run`)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from cache_vectors import near, unit
from pydantic import ValidationError

from core.cache import align, guard, keys
from core.cache.align import TokenVectors
from core.cache.config import CacheConfig
from core.cache.store import CacheHit, CacheStore, LookupMode, StoreLocked

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Convert 100 °F to Celsius"
PARAPHRASE = "What is 100 degrees Fahrenheit in Celsius?"
NEAR_MISS = "Convert 100 °C to Fahrenheit"


def body(text: str) -> dict:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }  # fmt: skip


def request(prompt: str = PROMPT, model: str = "m1", tenant: str = "t1", **params) -> keys.RequestKeys:
    payload = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, **params}
    return keys.request_keys(model, "chat", payload, tenant)


@pytest.fixture
def make_store(tmp_path, clock):
    stores: list[CacheStore] = []

    def make(**overrides) -> CacheStore:
        # Cosine + guard (the second stage needs real token vectors: see test_second_stage_*)
        encoder = overrides.pop("token_encoder", None)
        cfg = {"data_dir": tmp_path / "cache", "threshold": 0.9, "rescore": encoder is not None, **overrides}
        store = CacheStore(CacheConfig(**cfg), clock=clock, token_encoder=encoder)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store) -> CacheStore:
    return make_store()


def put(store: CacheStore, k: keys.RequestKeys, vec, text: str = "37.8 °C", model: str = "m1", **kw) -> None:
    assert asyncio.run(store.put(k, body(text), vec, model=model, **kw))


def lookup(store: CacheStore, k: keys.RequestKeys, vec=None, threshold: float | None = None,
           mode: LookupMode = LookupMode.EXACT_THEN_SEMANTIC) -> CacheHit | None:
    return asyncio.run(store.lookup(k, mode, vec, threshold))


# ------------------------------------------------------------- exact/semantic


def test_exact_hit_after_put(store):
    k, v = request(), unit(1)
    assert lookup(store, k, v) is None
    put(store, k, v)
    hit = lookup(store, k, v)
    assert hit is not None and hit.kind == "exact" and hit.similarity == 1.0
    assert hit.body == body("37.8 °C")
    s = store.stats()
    assert (s.hits_exact, s.hits_semantic, s.misses, s.puts, s.entries) == (1, 0, 1, 1, 1)


def test_semantic_hit_for_paraphrase(store):
    k, v = request(), unit(1)
    put(store, k, v)
    para = request(PARAPHRASE)
    assert para.partition == k.partition and para.exact != k.exact
    hit = lookup(store, para, near(v, 2))
    assert hit is not None and hit.kind == "semantic"
    assert 0.9 <= hit.similarity < 1.0 and hit.prompt == PROMPT
    assert store.stats().hits_semantic == 1


def test_below_threshold_is_a_miss(store):
    k, v = request(), unit(1)
    put(store, k, v)
    para = request(PARAPHRASE)
    assert lookup(store, para, near(v, 2, distance=0.6)) is None
    assert lookup(store, para, unit(99)) is None
    # the same vector passes with a lower per-call threshold
    assert lookup(store, para, near(v, 2, distance=0.6), 0.8)


def test_guard_rejects_close_vector_with_different_meaning(make_store):
    k, v = request(), unit(1)
    miss = request(NEAR_MISS)
    guarded = make_store()
    put(guarded, k, v)
    assert lookup(guarded, miss, near(v, 3)) is None
    assert guarded.stats().guard_rejects == 1
    guarded.close()
    # the same lookup without the guard would have served the wrong answer
    unguarded = make_store(guard=False)
    hit = lookup(unguarded, miss, near(v, 3))
    assert hit is not None and hit.kind == "semantic"


def _fake_encoder(table: dict[str, TokenVectors]):
    """A fake token encoder over fixed token vectors; records its calls."""
    def encode(batch: list[str]) -> list[TokenVectors]:
        encode.calls.append(list(batch))
        return [table[t] for t in batch]

    encode.calls = []
    return encode


def _tokens(words: list[str], rows: list[int]) -> TokenVectors:
    return TokenVectors(np.eye(8, dtype=np.float32)[rows], words)


def test_second_stage_needs_an_encoder(tmp_path):
    with pytest.raises(ValueError, match="token_encoder"):
        CacheStore(CacheConfig(data_dir=tmp_path / "c", rescore=True))


def test_second_stage_decides_after_the_guard(make_store):
    stored = "How do I tell my boss about my coworker?"
    reworded = "What's the best way to tell my boss about a colleague?"
    swapped = "How do I tell my coworker about my boss?"  # the guard lets this one through
    encoder = _fake_encoder({
        stored: _tokens(["tell", "boss", "about", "coworker"], [0, 1, 2, 3]),
        # a rewording: half the words changed, each matched loosely (cosine 0.7)
        reworded: TokenVectors(np.array([[1, 0, 0, 0], [0, 1, 0, 0], [.7, 0, .7, 0], [0, .7, 0, .7]],
                                        np.float32) @ np.eye(4, 8, dtype=np.float32),
                               ["tell", "boss", "regarding", "colleague"]),
        # the same words: a cosine this far from 1 means their order changed the meaning
        swapped: _tokens(["tell", "coworker", "about", "boss"], [0, 3, 2, 1]),
    })
    store = make_store(token_encoder=encoder, threshold=0.85)
    v = unit(1)
    put(store, request(stored), v)
    assert encoder.calls == [[stored]]  # put keeps the entry's token vectors with it
    hit = lookup(store, request(reworded), near(v, 2))  # cosine 0.958
    assert hit is not None and hit.kind == "semantic" and hit.prompt == stored
    assert encoder.calls[-1] == [reworded]  # the candidate's vectors come from its entry
    assert lookup(store, request(swapped), near(v, 4)) is None  # cosine 0.958 too
    assert encoder.calls[-1] == [swapped]  # the guard passed it; the second stage refused
    assert store.stats().guard_rejects == 1
    # the guard runs first: a near miss it refuses outright never reaches the encoder
    calls = len(encoder.calls)
    assert lookup(store, request("How do I tell my boss about my 2 coworkers?"), near(v, 3)) is None
    assert len(encoder.calls) == calls and store.stats().guard_rejects == 2


def test_a_soft_refusal_goes_to_the_second_stage(make_store, monkeypatch):
    """One word replaced by one the guard's synonym lists lack: the model decides (told that the
    guard refused softly), and what it says is served; a hard refusal never reaches it."""
    stored = "How do I tell my boss about my coworker?"
    unrelated = "How do I tell my boss about my raise?"
    encoder = _fake_encoder({
        stored: _tokens(["tell", "boss", "about", "coworker"], [0, 1, 2, 3]),
        unrelated: _tokens(["tell", "boss", "about", "raise"], [0, 1, 2, 5]),
    })
    from core.cache import guard
    assert guard.soft(guard.check(unrelated, stored)[1])
    decided: list[tuple[bool, bool]] = []
    texts: list[tuple[str, str] | None] = []
    real = align.accepts

    def accepts(cosine, guard_ok, a, b, *args, **kwargs):
        texts.append(kwargs.get("texts"))
        decided.append((guard_ok, real(cosine, guard_ok, a, b, *args, **kwargs)))
        return decided[-1][1]

    monkeypatch.setattr(align, "accepts", accepts)
    store = make_store(token_encoder=encoder, threshold=0.85)
    v = unit(1)
    put(store, request(stored), v)
    assert lookup(store, request(unrelated), near(v, 2, distance=0.05)) is None
    assert decided == [(False, False)] and encoder.calls[-1] == [unrelated]
    # the prompts go with their vectors, for core/cache/slots.py's refusals
    assert texts == [(unrelated, stored)]
    # the model's verdict is what counts: one that accepts makes it a hit
    monkeypatch.setattr(align, "accepts", lambda *a, **k: True)
    hit = lookup(store, request(unrelated), near(v, 2, distance=0.05))
    assert hit is not None and hit.prompt == stored
    # a hard refusal (numbers differ) never reaches the model
    assert lookup(store, request("How do I tell my boss about my 2 coworkers?"), near(v, 3)) is None
    # without the second stage a soft refusal stays a refusal
    plain = make_store(data_dir=store.config.data_dir.parent / "plain", threshold=0.85)
    put(plain, request(stored), v)
    assert lookup(plain, request(unrelated), near(v, 2, distance=0.05)) is None


def test_entries_stored_without_token_vectors_are_encoded_at_lookup(make_store):
    stored, reworded = "How do I tell my boss about my coworker?", "how do I tell my boss about my coworker"
    table = {stored: _tokens(["tell", "boss", "about", "coworker"], [0, 1, 2, 3]),
             reworded: _tokens(["tell", "boss", "about", "coworker"], [0, 1, 2, 3])}
    encoder = _fake_encoder(table)
    store = make_store(token_encoder=encoder, threshold=0.85)
    v = unit(1)
    asyncio.run(store.put_many(request(stored).partition, [(request(stored).exact, v, stored, body("x"))],
                               model="m1"))  # no token_vectors: an entry as older versions stored it
    assert encoder.calls == []
    assert lookup(store, request(reworded), near(v, 2, distance=0.05)) is not None
    assert encoder.calls[-1] == [reworded, stored]
    # put_many with token_vectors stores them: no encoding of the candidate
    other = "How do I tell my boss about my coworker, please?"
    table[other] = table[stored]
    asyncio.run(store.put_many(request(other).partition, [(request(other).exact, v, other, body("y"))],
                               model="m1", token_vectors=[table[stored]]))
    part = next(iter(store._parts.values()))
    got = part.collection.get(ids=[request(other).exact], include=["metadatas"])
    assert align.unpack(got["metadatas"][0]["tokens"]).tokens == ["tell", "boss", "about", "coworker"]


def test_no_prompt_text_means_no_semantic_hit(store):
    k, v = request(), unit(1)
    put(store, k, v)
    assert lookup(store, keys.RequestKeys("other-key", k.partition, None), near(v, 2)) is None


def test_exact_only_entries(store):
    payload = {"input": "some text", "model": "e"}
    k = keys.request_keys("e", "embeddings", payload, "t1")
    assert k.semantic_text is None
    assert asyncio.run(store.put(k, {"data": [1]}, model="e"))
    hit = lookup(store, k)
    assert hit is not None and hit.kind == "exact" and hit.body == {"data": [1]}


# ----------------------------------------------------------------- partitions


@pytest.mark.parametrize(
    "other",
    [
        {"model": "m2"},
        {"tenant": "t2"},
        {"max_tokens": 7},
        {"temperature": 0, "seed": 3},
    ],
)
def test_partitions_are_isolated(store, other):
    k, v = request(), unit(1)
    put(store, k, v)
    o = request(**other)
    assert o.partition != k.partition
    # same prompt, same vector: still no hit across partitions
    assert lookup(store, o, v) is None


# ------------------------------------------------------------------------ TTL


def test_ttl_expiry_and_purge(store, clock):
    k, v = request(), unit(1)
    put(store, k, v, ttl_s=10)
    clock.advance(9)
    assert lookup(store, k, v) is not None
    clock.advance(2)
    assert lookup(store, k, v) is None
    para = request(PARAPHRASE)
    assert lookup(store, para, near(v, 2)) is None
    assert asyncio.run(store.purge_expired()) == 1
    s = store.stats()
    assert s.entries == 0 and s.expired == 1 and s.partitions == 0  # empty partitions are dropped


def test_purge_keeps_live_entries(store, clock):
    a, b = request("What is 7 times 8?"), request("What is 9 times 9?")
    put(store, a, unit(1), ttl_s=5)
    put(store, b, unit(2), ttl_s=500)
    clock.advance(10)
    assert asyncio.run(store.purge_expired()) == 1
    assert lookup(store, b, unit(2)) is not None
    assert store.stats().entries == 1


def test_config_validation(tmp_path):
    for bad in ({"threshold": 0}, {"threshold": 1.5}, {"ttl_s": 0}, {"timeout_s": 0}, {"max_partitions": 0}):
        with pytest.raises(ValidationError):
            CacheConfig(data_dir=tmp_path, **bad)
    with pytest.raises(ValidationError):
        CacheConfig()  # neither data_dir nor host
    with pytest.raises(ValidationError):
        CacheConfig(data_dir=tmp_path, host="localhost")
    assert 0 < CacheConfig(data_dir=tmp_path).threshold <= 1


def test_invalid_partition_name_is_refused(store):
    with pytest.raises(ValueError):
        lookup(store, keys.RequestKeys("k", "bad name!", None))


# ------------------------------------------------------------ invalidation


def test_invalidate_one_model_then_all(store):
    m1, m2 = request(model="m1"), request(model="m2")
    put(store, m1, unit(1), model="m1")
    put(store, m2, unit(1), model="m2")
    assert asyncio.run(store.invalidate("m1")) == 1
    assert lookup(store, m1, unit(1)) is None
    assert lookup(store, m2, unit(1)) is not None
    put(store, m1, unit(1), model="m1")
    assert asyncio.run(store.invalidate()) == 2
    assert lookup(store, m2, unit(1)) is None
    assert store.stats().entries == 0
    # the store keeps working after invalidation
    put(store, m1, unit(1), model="m1")
    assert lookup(store, m1, unit(1)) is not None


# -------------------------------------------------------------------- bounds


def test_lru_eviction_per_partition(make_store, clock):
    store = make_store(max_entries_per_partition=5, evict_fraction=0.2)
    reqs = [request(f"What is {i} times {i}?") for i in range(6)]
    for i, k in enumerate(reqs[:5]):
        put(store, k, unit(i))
        clock.advance(1)
    # entry 0 is the oldest write but was just used: LRU keeps it
    assert lookup(store, reqs[0], unit(0)).kind == "exact"
    clock.advance(1)
    put(store, reqs[5], unit(5))  # 6 > 5: evict down to 4
    alive = [
        lookup(store, k, unit(i)) is not None for i, k in enumerate(reqs)
    ]
    assert alive == [True, False, False, True, True, True]
    s = store.stats()
    assert s.evictions == 2 and s.entries == 4


def test_partition_bound_drops_least_recently_used(make_store, clock):
    store = make_store(max_partitions=2)
    a, b, c = request(model="a"), request(model="b"), request(model="c")
    put(store, a, unit(1), model="a")
    clock.advance(1)
    put(store, b, unit(1), model="b")
    clock.advance(1)
    assert lookup(store, a, unit(1)) is not None  # a is now newer than b
    clock.advance(1)
    put(store, c, unit(1), model="c")
    assert lookup(store, b, unit(1)) is None
    assert lookup(store, a, unit(1)) is not None
    assert lookup(store, c, unit(1)) is not None
    assert store.stats().partitions == 2


# ---------------------------------------------------------- restart / owner


def test_survives_close_and_reopen(make_store):
    k, v = request(), unit(1)
    first = make_store()
    put(first, k, v)
    first.close()
    again = make_store()
    assert again.stats().entries == 1
    assert lookup(again, k, v).kind == "exact"
    para = request(PARAPHRASE)
    assert lookup(again, para, near(v, 2)).kind == "semantic"


def test_survives_process_exit(tmp_path, clock):
    """A process writes and exits without closing; the next process reads it."""
    k = request()
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from core.cache.config import CacheConfig
        from core.cache.store import CacheStore
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from cache_vectors import unit
        store = CacheStore(CacheConfig(data_dir={str(tmp_path / "cache")!r}, rescore=False))
        k = ({k.exact!r}, {k.partition!r}, {k.semantic_text!r})
        import asyncio
        from core.cache.keys import RequestKeys
        assert asyncio.run(store.put(RequestKeys(*k), {{"answer": 42}}, unit(1), model="m1"))
        os._exit(0)  # no close(): like a crash right after the write
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)
    with CacheStore(CacheConfig(data_dir=tmp_path / "cache", rescore=False)) as store:
        hit = lookup(store, k, unit(1))
        assert hit is not None and hit.body == {"answer": 42}


def test_one_process_owns_the_embedded_store(make_store):
    owner = make_store()
    with pytest.raises(StoreLocked):
        make_store()
    owner.close()
    make_store()  # free again after close


# ------------------------------------------------------------------- async


def test_async_api(store):
    k, v = request(), unit(1)

    async def run():
        assert await store.put(k, body("x"), v, model="m1")
        return await store.lookup(k, embedding=v)

    hit = asyncio.run(run())
    assert hit is not None and hit.body == body("x")


# -------------------------------------------------------------- server mode


def server_store(server, clock, **overrides) -> CacheStore:
    cfg = {"host": server.host, "port": server.port, "threshold": 0.9, "rescore": False, "timeout_s": 0.5,
           "maintenance_timeout_s": 3.0, "cooldown_s": 0.2, **overrides}  # fmt: skip
    return CacheStore(CacheConfig(**cfg), clock=clock)


def test_server_mode_shared_by_replicas(shared_chroma_server, clock):
    k, v = request(), unit(1)
    para = request(PARAPHRASE)
    with server_store(shared_chroma_server, clock) as a, server_store(shared_chroma_server, clock) as b:
        asyncio.run(a.invalidate())  # the server is shared by this module's tests
        put(a, k, v)
        # b never wrote this partition: it finds it on the server
        assert lookup(b, k, v).kind == "exact"
        assert lookup(b, para, near(v, 2)).kind == "semantic"
        miss = request(NEAR_MISS)
        assert lookup(b, miss, near(v, 3)) is None
        # invalidation from one replica drops what the other wrote
        assert asyncio.run(b.invalidate("m1")) == 1
        assert lookup(a, k, v) is None
        assert a.stats().errors == 0


def test_server_mode_ttl(shared_chroma_server, clock):
    k, v = request(), unit(1)
    with server_store(shared_chroma_server, clock) as s:
        asyncio.run(s.invalidate())
        put(s, k, v, ttl_s=5)
        clock.advance(6)
        assert lookup(s, k, v) is None
        assert asyncio.run(s.purge_expired()) == 1


def test_server_mode_leaves_foreign_collections_alone(shared_chroma_server, clock):
    import chromadb

    other = chromadb.HttpClient(host=shared_chroma_server.host, port=shared_chroma_server.port)
    other.get_or_create_collection("someone-elses", embedding_function=None)
    with server_store(shared_chroma_server, clock) as s:
        asyncio.run(s.invalidate())  # whatever earlier tests left
        put(s, request(), unit(1))
        assert asyncio.run(s.invalidate()) == 1
    assert [c.name for c in other.list_collections()] == ["someone-elses"]
    other.delete_collection("someone-elses")


def test_server_down_fails_fast_and_counts(chroma_server, clock):
    k, v = request(), unit(1)
    with server_store(chroma_server, clock) as s:
        put(s, k, v)
        chroma_server.stop()
        start = time.monotonic()
        assert lookup(s, k, v) is None
        assert time.monotonic() - start < 0.5 + 0.4  # timeout_s plus scheduling slack
        assert s.stats().errors == 1
        start = time.monotonic()
        assert lookup(s, k, v) is None  # breaker open: no wait
        assert time.monotonic() - start < 0.25
        assert not asyncio.run(s.put(k, body("x"), v, model="m1"))
        assert s.stats().errors == 3


def test_server_hung_times_out(chroma_server, clock):
    """A server that accepts but never answers: the lookup gives up at timeout_s."""
    k, v = request(), unit(1)
    with server_store(chroma_server, clock, timeout_s=0.3) as s:
        put(s, k, v)
        os.kill(chroma_server.proc.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            assert lookup(s, k, v) is None
            elapsed = time.monotonic() - start
        finally:
            os.kill(chroma_server.proc.pid, signal.SIGCONT)
        assert 0.25 < elapsed < 0.3 + 0.4  # timeout_s plus scheduling slack
        assert s.stats().timeouts == 1 and s.stats().errors == 1
        # once the cooldown is over and the server answers again, the cache recovers
        deadline = time.monotonic() + 5
        while lookup(s, k, v) is None:
            assert time.monotonic() < deadline, "cache did not recover"
            time.sleep(0.1)


def test_server_unreachable_at_start(clock, tmp_path):
    cfg = CacheConfig(host="127.0.0.1", port=9, timeout_s=0.3, maintenance_timeout_s=0.5, cooldown_s=0.1,
                      rescore=False)
    with CacheStore(cfg, clock=clock) as s:  # does not raise: the cache is optional
        k = request()
        assert lookup(s, k, unit(1)) is None
        assert s.stats().errors >= 1


def test_exact_hit_in_the_semantic_collection_needs_no_embedding(tmp_path):
    """An entry put with an embedding is found by its exact key alone (semantic=True)."""
    import numpy as np

    from core.cache import CacheConfig, CacheStore, RequestKeys

    with CacheStore(CacheConfig(data_dir=tmp_path / "db", rescore=False)) as store:
        vec = np.ones(384, np.float32) / np.sqrt(384)
        semantic = RequestKeys("key-1", "p-part-0123456789abcdef", "what is up")
        asyncio.run(store.put(semantic, {"a": 1}, vec, model="m"))
        exact_only = RequestKeys("key-1", "p-part-0123456789abcdef", None)
        assert lookup(store, exact_only, mode=LookupMode.EXACT) is None
        hit = lookup(store, semantic, mode=LookupMode.EXACT)
        assert hit is not None and hit.kind == "exact" and hit.body == {"a": 1}


def test_lookup_embedding_embeds_only_after_an_exact_miss(store):
    """lookup_embedding: exact, then the prompt embedded and the semantic try, in one call; the
    embedding comes back from a miss (the answer is stored under it), never from a hit."""
    k, v = request(), unit(1)
    embedded: list[str] = []

    def embed(text: str) -> np.ndarray:
        embedded.append(text)
        return near(v, 2) if text == PARAPHRASE else unit(7)

    assert asyncio.run(store.lookup_embedding(request("Something else entirely"), embed))[0] is None
    assert embedded == []  # an empty partition: nothing to search, nothing embedded
    put(store, k, v)
    hit, embedding = asyncio.run(store.lookup_embedding(k, embed))
    assert hit.kind == "exact" and embedding is None and embedded == []
    hit, embedding = asyncio.run(store.lookup_embedding(request(PARAPHRASE), embed))
    assert hit.kind == "semantic" and hit.prompt == PROMPT and embedding is None
    other = request("Something else entirely")
    hit, embedding = asyncio.run(store.lookup_embedding(other, embed))
    assert hit is None and np.array_equal(embedding, unit(7))
    assert embedded == [PARAPHRASE, other.semantic_text]
    s = store.stats()
    assert (s.hits_exact, s.hits_semantic, s.misses) == (1, 1, 2)


def test_a_mistyped_prompt_is_a_hit_below_the_threshold(make_store):
    """A trivial edit (slots.trivial_edit: a typo here) is the second stage's from
    align.TRIVIAL_MIN_COSINE on, under the store's threshold; another prompt at that cosine is not."""
    stored = "How tall is Mount Everest?"
    typo = "how tall is mount everst"
    other = "How old is Mount Everest?"
    encoder = _fake_encoder({
        stored: _tokens(["how", "tall", "is", "mount", "everest"], [0, 1, 2, 3, 4]),
        typo: _tokens(["how", "tall", "is", "mount", "ever", "##st"], [0, 1, 2, 3, 5, 6]),
        other: _tokens(["how", "old", "is", "mount", "everest"], [0, 7, 2, 3, 4]),
    })
    store = make_store(token_encoder=encoder, threshold=0.85)
    v = unit(1)
    put(store, request(stored), v)
    far = near(v, 2, distance=0.9)  # cosine ~0.74: under the threshold, over TRIVIAL_MIN_COSINE
    assert align.TRIVIAL_MIN_COSINE < float(np.dot(far, v)) < 0.85
    hit = lookup(store, request(typo), far)
    assert hit is not None and hit.prompt == stored
    assert lookup(store, request(other), far) is None
    # under TRIVIAL_MIN_COSINE even a trivial edit is no candidate
    assert lookup(store, request(typo), near(v, 3, distance=1.6)) is None


def test_a_context_sentence_naming_an_entity_is_a_trivial_edit_past_the_guard(make_store):
    """The guard refuses a context sentence that names a country (entities differ); the trivial
    edit overrules that refusal (guard.yields_to_trivial), and only that one: another country in
    the question stays refused."""
    stored = "What is the longest river in Spain?"
    context = "We're driving through Portugal in May. What is the longest river in Spain?"
    other = "We're driving through Portugal in May. What is the longest river in Portugal?"
    words = ["what", "is", "the", "longest", "river", "in", "spain"]
    encoder = _fake_encoder({
        stored: _tokens(words, [0, 1, 2, 3, 4, 5, 6]),
        context: _tokens(["we", "driving", "portugal", "may", *words], [7, 7, 7, 7, 0, 1, 2, 3, 4, 5, 6]),
        other: _tokens(["we", "driving", "portugal", "may", *words[:-1], "portugal"],
                       [7, 7, 7, 7, 0, 1, 2, 3, 4, 5, 7]),
    })
    store = make_store(token_encoder=encoder, threshold=0.85)
    v = unit(1)
    put(store, request(stored), v)
    close = near(v, 2, distance=0.3)
    assert not guard.check(context, stored)[0]
    hit = lookup(store, request(context), close)
    assert hit is not None and hit.prompt == stored
    assert lookup(store, request(other), close) is None
