"""Cache-aware routing across two real LLM replicas: requests sharing a prefix land where it
is cached (reported by the OpenAI usage field prompt_tokens_details.cached_tokens)."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.integration
CHAT = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def two_replica_url(serve_url):
    from ray import serve

    from serve_app.app import build_graph

    # Two LLM replicas on this 2-core machine: one thread each.
    app = build_graph({"device": "cpu", "llm_variant": "q4", "llm_spinning": False, "llm_threads": 1,
                     "engine": {"max_running": 4, "max_seq_len": 1024},
                      "cache": {"enabled": False}},
                    llm_options={"num_replicas": 2, "ray_actor_options": {"num_cpus": 1}})
    serve.run(app, name="routing", route_prefix="/routing")
    yield f"{serve_url}/routing"
    serve.delete("routing")


def test_shared_prefixes_stick_to_the_replica_that_caches_them(two_replica_url):
    systems = [f"You are assistant number {k}. " + "Follow the house style guide carefully. " * 12
               for k in range(3)]
    cached = []
    for round_ in range(3):
        for k, system in enumerate(systems):
            body = {"model": CHAT, "max_tokens": 2, "temperature": 0,
                    "messages": [{"role": "system", "content": system},
                                 {"role": "user", "content": f"Question {round_}-{k}?"}]}
            r = httpx.post(f"{two_replica_url}/v1/chat/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            usage = r.json()["usage"]
            cached.append((round_, usage["prompt_tokens_details"]["cached_tokens"], usage["prompt_tokens"]))
    later = [(c, p) for round_, c, p in cached if round_ > 0]
    # every repeat of a system prompt found its KV: the router sent it where it was cached
    assert all(c >= p - 40 for c, p in later), cached
