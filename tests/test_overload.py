"""Overload over HTTP with the real app: admission by expected wait, deadlines, fairness between
API keys, quotas, request ids. Small engines (2 slots, 1 thread) keep it fast."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time

import httpx
import pytest

from tests.conftest import wait_healthy

pytestmark = pytest.mark.integration
CHAT = "smollm2-135m-instruct"
KEYS = {"sk-flood": "flood", "sk-light": "light", "sk-capped": "capped", "sk-tokens": "tokens"}


def body(max_tokens: int, **extra) -> dict:
    return {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True} | extra


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}", "Cache-Control": "no-store"}


def deploy(serve_url: str, name: str, engine: dict, **args) -> str:
    from ray import serve

    from serve_app.app import build_app

    app_args = {"device": "cpu", "llm_variant": "q4", "llm_spinning": False, "llm_threads": 1,
                "engine": {"max_running": 2, "max_seq_len": 512} | engine,
                "cache": {"enabled": False}, "api_keys": KEYS} | args
    serve.run(build_app(app_args), name=name, route_prefix=f"/{name}")
    url = f"{serve_url}/{name}"
    wait_healthy(url)
    return url


@pytest.fixture(scope="module")
def admission_url(serve_url):
    from ray import serve

    # the Ingress' own early refusal (test_proxy_refusal.py: the same decisions in Serve's proxy)
    # max_seq_len: room for a flood long enough to hold the slots on a fast machine too
    url = deploy(serve_url, "admission", {"max_waiting": 16, "max_queue_wait_s": 1.0, "max_seq_len": 2048},
                 quotas={"capped": {"requests_per_min": 2}, "tokens": {"tokens_per_min": 60}},
                 proxy_refusal=False)
    yield url
    serve.delete("admission")


@pytest.fixture(scope="module")
def fair_url(serve_url):
    from ray import serve

    url = deploy(serve_url, "fair", {"max_waiting": 16, "max_queue_wait_s": None})
    yield url
    serve.delete("fair")


def post(url: str, payload: dict, key: str = "sk-flood", **headers) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=payload, headers=auth(key) | headers,
                      timeout=180)


def burst_of_ten(url: str) -> tuple[list[httpx.Response], list[httpx.Response]]:
    """Ten 150-token requests at once: some refused by the expected wait (503 overloaded with
    Retry-After, no internals), every accepted one answered in full. -> (refused, served)"""
    with cf.ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: post(url, body(150)), range(10)))
    refused = [r for r in responses if r.status_code == 503]
    served = [r for r in responses if r.status_code == 200]
    assert refused and served and len(refused) + len(served) == 10
    for r in refused:
        err = r.json()["error"]
        assert err["code"] == "overloaded" and int(r.headers["retry-after"]) >= 1
        assert r.headers["x-request-id"] and "Actor" not in err["message"]
    for r in served:  # accepted is never dropped: a full answer
        assert r.json()["choices"][0]["finish_reason"] == "length"
        assert r.json()["usage"]["completion_tokens"] == 150
    return refused, served


def test_admission_refuses_by_expected_wait_and_serves_every_accepted(admission_url):
    burst_of_ten(admission_url)


def test_ingress_keeps_a_view_of_the_engine_load(admission_url):
    post(admission_url, body(2))
    view = httpx.get(f"{admission_url}/v1/load", headers=auth("sk-flood")).json()
    assert view["snapshot"] is not None and "*" in view["snapshot"]["expected_wait_s"]
    assert view["snapshot"]["max_queue_wait_s"] == 1.0


def test_request_ids_are_echoed_or_generated(admission_url):
    mine = post(admission_url, body(2), **{"x-request-id": "client-42"})
    assert mine.status_code == 200 and mine.headers["x-request-id"] == "client-42"
    new = post(admission_url, {"model": CHAT, "messages": []})
    assert new.status_code == 400 and len(new.headers["x-request-id"]) >= 8


def test_quota_answers_429_at_once_and_other_keys_are_unaffected(admission_url):
    codes = [post(admission_url, body(2), "sk-capped").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    over = post(admission_url, body(2), "sk-capped")
    err = over.json()["error"]
    assert over.status_code == 429 and err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    assert int(over.headers["retry-after"]) >= 1
    # decided from the headers, before the body is read: even a malformed one is a 429
    assert post(admission_url, {"model": CHAT}, "sk-capped").status_code == 429
    assert post(admission_url, body(2), "sk-light").status_code == 200
    assert post(admission_url, body(2), "sk-wrong").status_code == 401  # bad keys reach the route
    # the marker of a request Serve's proxy admitted, sent by a client with the app's real
    # secret: the proxy drops it, so the Ingress counts the request as its own
    secret = admission_secret("admission")
    assert post(admission_url, body(2), "sk-capped", **{"x-effserve-admitted": secret}).status_code == 429
    decided = httpx.get(f"{admission_url}/v1/load", headers=auth("sk-flood")).json()["decided"]
    assert decided["refused"] >= 3 and decided["by_proxy"] == 0


def admission_secret(app: str) -> str:
    from ray import serve

    return serve.get_deployment_handle("Ingress", app).refusal_settings.remote().result()["secret"]


def test_token_quota_counts_prompt_and_max_tokens(admission_url):
    first = post(admission_url, body(40, ignore_eos=True), "sk-tokens")  # ~30 prompt + 40: in debt
    assert first.status_code == 200
    second = post(admission_url, body(2), "sk-tokens")
    assert second.status_code == 429 and second.json()["error"]["type"] == "tokens"


def test_deadline_ends_a_waiting_request_with_504(fair_url):
    with cf.ThreadPoolExecutor(3) as pool:
        busy = [pool.submit(post, fair_url, body(200)) for _ in range(2)]
        time.sleep(1.0)  # both slots are decoding 200 tokens each
        late = post(fair_url, body(8), **{"x-request-timeout": "0.5"})
        assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
        assert all(f.result().status_code == 200 for f in busy)


def test_deadline_ends_a_stream_with_an_error_event(fair_url):
    with httpx.stream("POST", f"{fair_url}/v1/chat/completions", json=body(400, stream=True),
                      headers=auth("sk-light") | {"x-request-timeout": "2"}, timeout=60) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    errors = [json.loads(e[6:])["error"] for e in events if '"error"' in e]
    assert errors and errors[0]["code"] == "deadline_exceeded"
    assert "request id" in errors[0]["message"] and "Actor" not in errors[0]["message"]


def test_bad_deadline_header_is_a_400_naming_it(fair_url):
    r = post(fair_url, body(2), **{"x-request-timeout": "soon"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-request-timeout"


def test_light_key_gets_the_next_slot_not_the_back_of_the_flood(fair_url):
    done: list[str] = []

    def send(key: str, max_tokens: int) -> int:
        status = post(fair_url, body(max_tokens), key).status_code
        done.append(key)
        return status

    with cf.ThreadPoolExecutor(8) as pool:
        # 2 decoding, 5 waiting; long enough that none has finished when the light key comes
        flood = [pool.submit(send, "sk-flood", 300) for _ in range(7)]
        time.sleep(1.5)
        light = pool.submit(send, "sk-light", 8)
        assert light.result() == 200 and all(f.result() == 200 for f in flood)
    # FIFO would finish it after all 7; fair shares give it the first slot that frees
    assert done.index("sk-light") <= 3, done


def test_light_key_is_accepted_and_answered_while_the_flood_holds_every_slot(admission_url):
    flood_tokens = 1200  # seconds of decoding even on a fast machine (200 ended within 1.5 s)
    with cf.ThreadPoolExecutor(4) as pool:
        flood = [pool.submit(post, admission_url, body(flood_tokens)) for _ in range(2)]
        time.sleep(1.5)  # both slots decode the flood's tokens
        assert post(admission_url, body(flood_tokens)).status_code == 503  # its next would wait for them
        light = post(admission_url, body(8), "sk-light")
        # not a refusal, nor the back of the flood: a slot the flood gives up (paused, resumed)
        assert light.status_code == 200 and light.json()["usage"]["completion_tokens"] == 8
        assert not any(f.done() for f in flood)
        for f in flood:  # accepted, never dropped: the paused one resumes to a full answer
            assert f.result().status_code == 200
            assert f.result().json()["usage"]["completion_tokens"] == flood_tokens
