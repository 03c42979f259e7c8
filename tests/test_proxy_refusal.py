"""The early refusal in Serve's HTTP proxy (serve_app/proxy_refusal.py; conftest sets
RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH as `make serve` does) with the real app: quotas and the
expected wait decided there, nothing counted twice by the Ingress, and the marker of an admitted
request not forgeable by a client."""

from __future__ import annotations

import httpx
import pytest

from tests.test_overload import CHAT, admission_secret, auth, body, burst_of_ten, deploy, post

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def proxy_url(serve_url):
    from ray import serve

    url = deploy(serve_url, "proxied", {"max_waiting": 16, "max_queue_wait_s": 1.0},
                 quotas={"capped": {"requests_per_min": 2}})
    yield url
    serve.delete("proxied")


def decided(url: str) -> dict:
    """What the Ingress replica's own Gate decided, and how many the proxy passed on admitted."""
    return httpx.get(f"{url}/v1/load", headers=auth("sk-light")).json()["decided"]


def test_proxy_answers_quota_429_and_other_keys_are_unaffected(proxy_url):
    codes = [post(proxy_url, body(2), "sk-capped").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    over = post(proxy_url, {"model": CHAT}, "sk-capped", **{"x-request-id": "mine-1"})  # no body read
    err = over.json()["error"]
    assert over.status_code == 429 and err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    assert int(over.headers["retry-after"]) >= 1 and over.headers["x-request-id"] == "mine-1"
    assert post(proxy_url, body(2), "sk-light").status_code == 200
    assert post(proxy_url, body(2), "sk-wrong").status_code == 401  # bad keys reach the route
    # the Ingress neither refused nor counted any of them: the proxy decided, once
    counts = decided(proxy_url)
    assert counts["refused"] == 0 and counts["admitted"] == 0 and counts["by_proxy"] >= 4


def test_forged_admitted_marker_is_not_trusted(proxy_url):
    post(proxy_url, body(2), "sk-capped")  # spent already, or now
    for marker in (admission_secret("proxied"), "anything"):  # even the app's real secret
        forged = post(proxy_url, body(2), "sk-capped", **{"x-effserve-admitted": marker})
        assert forged.status_code == 429


def test_proxy_refuses_by_expected_wait_and_serves_every_accepted(proxy_url):
    before = decided(proxy_url)
    _, served = burst_of_ten(proxy_url)
    after = decided(proxy_url)
    assert after["refused"] == before["refused"] == 0  # the Ingress refused none itself
    # the proxy passed on every accepted one, and refused some without the hop
    assert len(served) <= after["by_proxy"] - before["by_proxy"] < 10


def test_gate_trusts_only_its_own_secret():
    from serve_app.gate import Gate

    gate = Gate({}, None, None, None, "s3cret")  # type: ignore[arg-type]
    assert gate.trusts(b"s3cret")
    assert not gate.trusts(b"s3cre") and not gate.trusts(b"") and not gate.trusts(None)
    assert not Gate({}, None, None, None, "").trusts(b"")  # type: ignore[arg-type]


def test_a_forwarded_reservation_counts_until_the_second_poll_after_it():
    """The proxy cannot see when the Ingress sends a request on to the engine: it counts it
    until a poll that started at least POLL_S after it was forwarded; an answer showing it never
    reached the engine drops it at once."""
    import asyncio

    from serve_app.overload import LoadView

    class Idle:  # an engine with both slots free
        def __init__(self) -> None:
            self.load = self

        async def remote(self) -> dict:
            return {"queues": {"*": {"free_at": [0, 0], "prefill": 0, "queued": 0}},
                    "step_s": [0.01, 0.01], "slots": 2, "prefill_tok_s": 1000.0}

    async def scenario() -> None:
        view = LoadView(Idle(), max_queue_wait_s=5.0)
        kept, dropped = await view.check("a", 10), await view.check("a", 10)
        view.forwarded(kept)
        view.forwarded(dropped)
        view.drop(dropped)  # its answer was a 400, or a cache hit
        polls = view._polls
        while view._polls < polls + 1:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the next poll landed: it may have left before the engine had it
        assert kept in view.reservations and dropped not in view.reservations
        while view._polls < polls + 3:
            await asyncio.sleep(0.01)
        assert kept not in view.reservations
        view._task.cancel()

    asyncio.run(scenario())
