"""Cache hits answered in Serve's proxy (serve_app/cache_front.py), without Ray: which requests it
looks up (only those the Ingress would serve from the cache the same way), what a hit and a
miss leave behind, and the pieces it relies on (the body handed on, the tokenizer pickled, no
stale near-cache entry after an invalidation)."""

from __future__ import annotations

import asyncio
import json
import pickle

import numpy as np
import pytest

from core.build.artifacts import LLM_ID
from core.cache import RequestKeys
from core.cache.near import NearCache
from core.llm.chat_tokenizer import ChatTokenizer
from serve_app.cache_front import LOOKED_UP, CacheFront
from serve_app.early_refusal import _replay
from serve_app.quotas import QuotaArgs, Quotas
from serve_app.response_cache import ResponseCacheClient

CACHED = {"id": "chatcmpl-old", "object": "chat.completion", "created": 1, "model": LLM_ID,
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                       "finish_reason": "stop", "logprobs": None}],
          "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}
EMBEDDING = np.ones(4, dtype=np.float32)


class FakeCacheReplica:
    """The cache deployment's handle: `lookup.remote(keys)` -> (hit, embedding)."""

    def __init__(self, hit: dict | None) -> None:
        self.hit, self.asked = hit, []
        self.lookup = self

    async def remote(self, keys):
        self.asked.append(keys)
        return self.hit, EMBEDDING


@pytest.fixture(scope="module")
def chat(llm_dir) -> ChatTokenizer:
    return ChatTokenizer(llm_dir)


def front(chat: ChatTokenizer, hit: dict | None, keys: dict | None = None,
          quotas: dict | None = None) -> tuple[CacheFront, FakeCacheReplica]:
    replica = FakeCacheReplica(hit)
    limits = {t: QuotaArgs(**q) for t, q in (quotas or {}).items()}
    return CacheFront(ResponseCacheClient(replica), keys or {}, Quotas(limits), chat), replica


def scope(path: str = "/v1/chat/completions", **headers: str) -> dict:
    merged = {"content-type": "application/json", **headers}
    return {"type": "http", "method": "POST", "path": path,
            "headers": [(k.encode(), v.encode()) for k, v in merged.items()]}


def body(**fields) -> bytes:
    return json.dumps({"model": LLM_ID, "temperature": 0, "max_tokens": 8,
                       "messages": [{"role": "user", "content": "Capital of France?"}]} | fields).encode()


def answer(cache_front: CacheFront, request_scope: dict, raw: bytes, path: str = "/v1/chat/completions"):
    return asyncio.run(cache_front.answer(request_scope, raw, path))


def test_a_hit_is_answered_as_the_ingress_answers_it(chat):
    cache_front, replica = front(chat, {"kind": "exact", "body": CACHED, "expires_at": 0.0})
    response = answer(cache_front, scope(), body())
    assert response is not None and response.headers["x-cache"] == "hit-exact"
    sent = json.loads(response.body)
    assert sent["choices"] == CACHED["choices"] and sent["usage"] == CACHED["usage"]
    assert sent["id"] != "chatcmpl-old" and sent["id"].startswith("chatcmpl-")  # its own id
    assert len(replica.asked) == 1 and replica.asked[0].semantic_text == "Capital of France?"


def test_a_streamed_hit_is_an_event_stream(chat):
    cache_front, _ = front(chat, {"kind": "semantic", "body": CACHED, "expires_at": 0.0})
    response = answer(cache_front, scope(), body(stream=True))
    assert response.media_type == "text/event-stream" and response.headers["x-cache"] == "hit-semantic"


def test_a_miss_goes_on_with_its_lookup(chat):
    cache_front, replica = front(chat, None)
    request_scope = scope()
    assert answer(cache_front, request_scope, body()) is None
    looked = request_scope[LOOKED_UP]
    assert looked["exact"] == replica.asked[0].exact and looked["embedding"] is EMBEDDING


@pytest.mark.parametrize("case", [
    "no-cache", "no-store", "sampled", "tokens quota", "bad key", "other model", "bad timeout",
    "not json", "invalid json", "invalid field", "tools", "response_format", "too long"])
def test_what_the_ingress_would_answer_otherwise_goes_on_unlooked(chat, case):
    """Each of these the Ingress answers without a cache hit (or with an error): the proxy
    neither answers nor looks it up, and leaves no trace in the scope."""
    keys = {"sk-a": "a", "sk-t": "t"} if case in ("bad key", "tokens quota") else None
    cache_front, replica = front(chat, {"kind": "exact", "body": CACHED, "expires_at": 0.0}, keys,
                                 {"t": {"tokens_per_min": 10**6}})
    headers, raw = {"authorization": "Bearer sk-a"} if keys else {}, body()
    match case:
        case "no-cache" | "no-store":
            headers["cache-control"] = case
        case "sampled":
            raw = body(temperature=0.7)
        case "tokens quota":
            headers["authorization"] = "Bearer sk-t"
        case "bad key":
            headers["authorization"] = "Bearer sk-nope"
        case "other model":
            raw = body(model="gpt-4o")
        case "bad timeout":
            headers["x-request-timeout"] = "-3"
        case "not json":
            headers["content-type"] = "text/plain"
        case "invalid json":
            raw = raw[:-1]
        case "invalid field":
            raw = body(max_tokens=0)
        case "tools":
            raw = body(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
        case "response_format":
            raw = body(response_format={"type": "json_object"})
        case "too long":
            raw = body(messages=[{"role": "user", "content": "word " * (chat.context_length + 10)}])
    request_scope = scope(**headers)
    assert answer(cache_front, request_scope, raw) is None
    assert replica.asked == [] and LOOKED_UP not in request_scope


def test_completions_are_answered_too(chat):
    cached = {**CACHED, "object": "text_completion",
              "choices": [{"index": 0, "text": " Paris.", "finish_reason": "stop", "logprobs": None}]}
    cache_front, _ = front(chat, {"kind": "exact", "body": cached, "expires_at": 0.0})
    raw = json.dumps({"model": LLM_ID, "prompt": "Capital of France?", "temperature": 0}).encode()
    response = answer(cache_front, scope("/v1/completions"), raw, "/v1/completions")
    assert json.loads(response.body)["choices"][0]["text"] == " Paris."


def test_a_lookup_that_raced_an_invalidation_is_not_kept_near():
    """An exact hit fetched before DELETE /v1/cache and returned after it must not refill the
    near cache: the entry is gone from the store."""
    release = asyncio.Event()

    class Slow(FakeCacheReplica):
        async def remote(self, keys):
            await release.wait()
            return self.hit, None

    async def scenario() -> None:
        client = ResponseCacheClient(Slow({"kind": "exact", "body": CACHED, "expires_at": 4e9}))
        client.near = NearCache(8)
        keys = RequestKeys("k1", "p-part", None)
        pending = asyncio.ensure_future(client.lookup(keys))
        await asyncio.sleep(0)
        client.clear_near()  # the invalidation lands while the lookup is out
        release.set()
        assert (await pending).body == CACHED  # this answer was valid when it was fetched
        assert client.near.get("k1") is None
        assert (await client.lookup(keys)).kind == "exact" and client.near.get("k1") == CACHED

    asyncio.run(scenario())


def test_the_body_handed_on_is_not_read_twice():
    """The replica fetches the body from the proxy anyway: after the copy from the scope, the
    app sees what the connection says next (a disconnect), not the body again."""
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}, {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0)

    async def scenario() -> None:
        replay = _replay(b"{}", receive, skip_body=True)
        assert (await replay())["body"] == b"{}"
        assert (await replay())["type"] == "http.disconnect"

    asyncio.run(scenario())


def test_the_tokenizer_travels_by_value(chat):
    """Serve's proxy gets the Ingress' tokenizer through a handle call: no path to read from."""
    copy = pickle.loads(pickle.dumps(chat))
    messages = [{"role": "user", "content": "Wie spät ist es? 3 + 4 = 7"}]
    assert copy.chat_prompt(messages) == chat.chat_prompt(messages)
    assert copy.encode(copy.chat_prompt(messages)) == chat.encode(chat.chat_prompt(messages))
    assert copy.context_length == chat.context_length and copy.stop_ids == chat.stop_ids


def test_the_ingress_skips_only_the_lookup_the_proxy_made():
    """A miss the proxy looked up is not looked up again (its embedding is kept for the store);
    any other request, a Cache-Control: no-cache one included, is the Ingress' as before."""
    from types import SimpleNamespace

    from serve_app.ingress import Ingress
    from serve_app.response_cache import CachePlan

    lookup = Ingress.func_or_class._lookup
    replica = FakeCacheReplica(None)
    ingress = SimpleNamespace(cache=ResponseCacheClient(replica))
    proxied = SimpleNamespace(scope={LOOKED_UP: {"exact": "k1", "embedding": EMBEDDING}})
    same, other = RequestKeys("k1", "p-part", "q"), RequestKeys("k2", "p-part", "q")

    found = asyncio.run(lookup(ingress, proxied, CachePlan(same, True)))
    assert found.body is None and found.embedding is EMBEDDING and replica.asked == []
    asyncio.run(lookup(ingress, proxied, CachePlan(other, True)))
    asyncio.run(lookup(ingress, SimpleNamespace(scope={}), CachePlan(same, True)))
    assert replica.asked == [other, same]
    assert asyncio.run(lookup(ingress, proxied, CachePlan(same, False))).embedding is None
