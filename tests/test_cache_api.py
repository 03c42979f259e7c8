"""The response cache as a user sees it: over HTTP, in the real app, on a real chromadb."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from tests.conftest import wait_healthy

pytestmark = pytest.mark.integration
CHAT = "smollm2-135m-instruct"


def ask(url: str, question: str, headers: dict | None = None, **extra) -> httpx.Response:
    body = {"model": CHAT, "temperature": 0, "max_tokens": 12,
            "messages": [{"role": "user", "content": question}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers or {}, timeout=120)


def unique(text: str) -> str:
    return f"{text} (ref {uuid.uuid4().hex[:6]})"


def test_exact_then_semantic_hit_with_the_same_answer(serve_url):
    question = unique("What is the capital city of Australia?")
    first = ask(serve_url, question)
    assert first.headers["x-cache"] == "miss"
    again = ask(serve_url, question)
    assert again.headers["x-cache"] == "hit-exact"
    answer = first.json()["choices"][0]["message"]["content"]
    assert again.json()["choices"][0]["message"]["content"] == answer
    paraphrase = ask(serve_url, question.replace("What is", "what's").replace("?", " ?"))
    assert paraphrase.headers["x-cache"] in ("hit-exact", "hit-semantic")  # normalised or close
    assert paraphrase.json()["choices"][0]["message"]["content"] == answer


def test_a_rewording_is_a_semantic_hit_through_the_second_stage(serve_url):
    """Different words (no normalisation makes them equal): the cosine, the guard and the token
    alignment of the served default all have to agree."""
    ref = uuid.uuid4().hex[:6]
    first = ask(serve_url, f"How do I reverse a list in Python? (ref {ref})")
    assert first.headers["x-cache"] == "miss"
    reworded = ask(serve_url, f"What is the way to reverse a Python list? (ref {ref})")
    assert reworded.headers["x-cache"] == "hit-semantic"
    content = [r.json()["choices"][0]["message"]["content"] for r in (first, reworded)]
    assert content[0] == content[1]


def test_near_miss_with_other_numbers_is_not_served_from_cache(serve_url):
    ask(serve_url, "Convert 100 degrees Fahrenheit to Celsius.")
    other = ask(serve_url, "Convert 100 degrees Celsius to Fahrenheit.")
    assert other.headers["x-cache"] == "miss"


def test_params_and_sampling_partition_the_cache(serve_url):
    question = unique("Name a large ocean.")
    ask(serve_url, question)
    assert ask(serve_url, question, max_tokens=5).headers["x-cache"] == "miss"
    sampled = ask(serve_url, question, temperature=0.8)  # not reproducible: never cached
    assert sampled.headers["x-cache"] == "miss"
    assert ask(serve_url, question, temperature=0.8).headers["x-cache"] == "miss"
    seeded = ask(serve_url, question, temperature=0.8, seed=3)
    assert ask(serve_url, question, temperature=0.8, seed=3).headers["x-cache"] == "hit-exact"
    assert seeded.status_code == 200


def test_cache_control_no_store_and_no_cache(serve_url):
    question = unique("Which planet is known as the red planet?")
    assert ask(serve_url, question, {"Cache-Control": "no-store"}).headers["x-cache"] == "miss"
    assert ask(serve_url, question, {"Cache-Control": "no-cache"}).headers["x-cache"] == "miss"
    assert ask(serve_url, question).headers["x-cache"] == "hit-exact"  # no-cache still stored
    assert ask(serve_url, question, {"Cache-Control": "no-cache"}).headers["x-cache"] == "miss"


def test_streamed_request_is_replayed_as_sse_from_the_cache(serve_url):
    question = unique("Give one word for happy.")
    plain = ask(serve_url, question).json()["choices"][0]["message"]["content"]
    body = {"model": CHAT, "temperature": 0, "max_tokens": 12, "stream": True,
            "messages": [{"role": "user", "content": question}]}
    with httpx.stream("POST", f"{serve_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["x-cache"] == "hit-exact"
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == plain
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_streamed_miss_is_stored_for_the_next_caller(serve_url):
    question = unique("Name a colour of the rainbow.")
    body = {"model": CHAT, "temperature": 0, "max_tokens": 8, "stream": True,
            "messages": [{"role": "user", "content": question}]}
    with httpx.stream("POST", f"{serve_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["x-cache"] == "miss"
        list(r.iter_lines())
    import time
    for _ in range(20):  # stored in the background after the stream ends
        if ask(serve_url, question).headers["x-cache"] == "hit-exact":
            return
        time.sleep(0.1)
    pytest.fail("the streamed answer was not cached")


def test_invalidate_one_model_or_all(serve_url):
    question = unique("What colour is the sky on a clear day?")
    ask(serve_url, question)
    assert ask(serve_url, question).headers["x-cache"] == "hit-exact"
    r = httpx.delete(f"{serve_url}/v1/cache", params={"model": "some-other-model"})
    assert r.status_code == 200
    assert ask(serve_url, question).headers["x-cache"] == "hit-exact"
    r = httpx.delete(f"{serve_url}/v1/cache", params={"model": CHAT})
    assert r.status_code == 200 and r.json()["removed"] >= 1
    assert ask(serve_url, question).headers["x-cache"] == "miss"
    assert httpx.delete(f"{serve_url}/v1/cache").status_code == 200
    assert ask(serve_url, question).headers["x-cache"] == "miss"


@pytest.fixture(scope="module")
def secure_url(serve_url, tmp_path_factory):
    """A second app with API keys (two tenants) and its own persistent cache directory."""
    from ray import serve

    from serve_app.app import build_app

    args = {"device": "cpu", "llm_variant": "q4", "llm_spinning": False, "llm_threads": 1,
            "engine": {"max_running": 2, "max_seq_len": 512},
            "cache": {"data_dir": str(tmp_path_factory.mktemp("chroma-secure"))},
            "api_keys": {"key-alpha": "alpha", "key-beta": "beta"},
            "quotas": {"beta": {"tokens_per_min": 10**7}}}  # beta's hits spend prompt tokens
    serve.run(build_app(args), name="secure", route_prefix="/secure")
    url = f"{serve_url}/secure"
    wait_healthy(url)
    yield url, args
    serve.delete("secure")


def test_api_keys_and_tenant_partitions(secure_url):
    url, _ = secure_url
    question = unique("What is the largest planet?")
    assert ask(url, question).status_code == 401
    assert ask(url, question, {"Authorization": "Bearer wrong"}).status_code == 401
    alpha, beta = {"Authorization": "Bearer key-alpha"}, {"Authorization": "Bearer key-beta"}
    assert ask(url, question, alpha).headers["x-cache"] == "miss"
    assert ask(url, question, alpha).headers["x-cache"] == "hit-exact"
    assert ask(url, question, beta).headers["x-cache"] == "miss"  # another tenant's entry


def test_serve_proxy_answers_hits_itself_unless_they_spend_tokens(secure_url):
    """cache_front.py: a hit never reaches the Ingress (it counts what the proxy passed on as
    `by_proxy`), with the headers it would have had; a tenant with a tokens quota is answered
    by the Ingress, which spends them. A miss is looked up once, by the proxy."""
    from ray import serve

    url, _ = secure_url
    alpha, beta = {"Authorization": "Bearer key-alpha"}, {"Authorization": "Bearer key-beta"}
    store = serve.get_deployment_handle("CacheDeployment", app_name="secure")

    def passed_on() -> int:
        return httpx.get(f"{url}/v1/load", headers=alpha).json()["decided"]["by_proxy"]

    question = unique("How many legs does a spider have?")
    misses = store.stats.remote().result()["misses"]
    assert ask(url, question, alpha).headers["x-cache"] == "miss"
    # one lookup, not a second one in the Ingress
    assert store.stats.remote().result()["misses"] - misses == 1
    ask(url, question, beta)
    for headers in (alpha, beta):
        for _ in range(40):  # stored in the background
            if ask(url, question, headers).headers["x-cache"] == "hit-exact":
                break
        else:
            pytest.fail("never cached")
    before = passed_on()
    hit = ask(url, question, {**alpha, "x-request-id": "mine-42"})
    assert hit.headers["x-cache"] == "hit-exact" and hit.headers["x-request-id"] == "mine-42"
    assert hit.headers["content-type"] == "application/json" and hit.json()["choices"]
    assert passed_on() == before
    assert ask(url, question, beta).headers["x-cache"] == "hit-exact"
    assert passed_on() == before + 1


def test_cache_survives_an_app_restart(secure_url):
    from ray import serve

    from serve_app.app import build_app

    url, args = secure_url
    alpha = {"Authorization": "Bearer key-alpha"}
    question = unique("What is the boiling point of water at sea level?")
    ask(url, question, alpha)
    assert ask(url, question, alpha).headers["x-cache"] == "hit-exact"
    serve.delete("secure")
    serve.run(build_app(args), name="secure", route_prefix="/secure")
    wait_healthy(url)
    assert ask(url, question, alpha).headers["x-cache"] == "hit-exact"


def test_invalidation_from_elsewhere_reaches_the_near_cache(serve_url):
    """A DELETE received by another ingress replica (here: sent to the cache replica directly)
    must empty this replica's near cache: the next request is a miss, not a stale hit."""
    from ray import serve

    question = unique("Which planet is known as the red planet?")
    assert ask(serve_url, question).headers["x-cache"] == "miss"
    for _ in range(40):  # the answer is stored in the background, then kept near
        if ask(serve_url, question).headers["x-cache"] == "hit-exact":
            break
    else:
        pytest.fail("never cached")
    cache = serve.get_deployment_handle("CacheDeployment", app_name="effserve")
    assert cache.invalidate.remote(None).result() >= 1
    time.sleep(0.5)  # the ingress hears of it through its long poll, within milliseconds
    assert ask(serve_url, question).headers["x-cache"] == "miss"
