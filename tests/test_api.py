"""The app in real Ray Serve, over real HTTP, with the official OpenAI client."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

pytestmark = pytest.mark.integration
CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def client(serve_url) -> OpenAI:
    return OpenAI(base_url=f"{serve_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_chat_and_embedding_models(client):
    ids = {m.id for m in client.models.list().data}
    assert {CHAT, EMBED} <= ids


def test_chat_completion_answers_in_english(client):
    r = client.chat.completions.create(
        model=CHAT, temperature=0, max_tokens=30,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}])
    text = r.choices[0].message.content
    assert "Paris" in text
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 30
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_chat_equals_plain_chat(client):
    kwargs = dict(model=CHAT, temperature=0, max_tokens=20,
                  messages=[{"role": "user", "content": "Name a fruit."}])
    plain = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                 **kwargs))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_sse_ends_with_done(serve_url):
    body = {"model": CHAT, "stream": True, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.stream("POST", f"{serve_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_completions(client):
    r = client.completions.create(model=CHAT, prompt="The sky is", max_tokens=8, temperature=0)
    assert r.choices[0].text.strip() and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0


def test_embeddings_are_384_d_unit_vectors_and_rank_meaning(client):
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell today."]
    r = client.embeddings.create(model=EMBED, input=texts)  # the client asks for base64
    v = np.array([d.embedding for d in r.data])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    floats = client.embeddings.create(model=EMBED, input=texts[0], encoding_format="float")
    assert np.allclose(floats.data[0].embedding, v[0], atol=1e-6)
    assert r.usage.prompt_tokens > 0


def test_bad_requests_are_4xx_naming_the_field(client, serve_url):
    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(model=CHAT, temperature=7,
                                       messages=[{"role": "user", "content": "x"}])
    assert e.value.body["param"] == "temperature"
    with pytest.raises(NotFoundError) as e:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["param"] == "model"
    r = httpx.post(f"{serve_url}/v1/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(f"{serve_url}/v1/completions",
                   json={"model": CHAT, "prompt": "word " * 9000, "max_tokens": 4}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_repeated_system_prompt_reports_cached_tokens(serve_url):
    system = "You are a careful assistant that answers in one short sentence. " * 8
    body = {"model": CHAT, "max_tokens": 3, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]}
    # Two greetings: the response cache may answer the second from the first (a paraphrase);
    # this test is about the engine's KV prefix cache, so both go to the model.
    fresh = {"Cache-Control": "no-store"}
    first = httpx.post(f"{serve_url}/v1/chat/completions", json=body, headers=fresh,
                       timeout=60).json()["usage"]
    body["messages"][1]["content"] = "Hello there"
    second = httpx.post(f"{serve_url}/v1/chat/completions", json=body, headers=fresh,
                        timeout=60).json()["usage"]
    assert first["prompt_tokens_details"]["cached_tokens"] < 16
    assert second["prompt_tokens_details"]["cached_tokens"] >= second["prompt_tokens"] - 24


def test_negative_seed_is_accepted(client):
    """OpenAI seeds are int64; found by the fuzz test (it was a 500)."""
    r = client.chat.completions.create(model=CHAT, temperature=0.7, seed=-12345, max_tokens=4,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert r.choices[0].message.content is not None
