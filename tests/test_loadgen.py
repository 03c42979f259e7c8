"""bench.loadgen's pure parts: statistics, SSE parsing, error causes, tables, the closed loop.
No network, no models: milliseconds."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from bench.loadgen import (
    DONE,
    LoadResult,
    RequestRecord,
    _closed_loop,
    chunk_content,
    error_cause,
    errors_by_cause,
    parse_sse_line,
    percentile,
    results_table,
    summarize_chat,
    summarize_embeddings,
    tpot_s,
)


def chat_record(ttft: float, latency: float, tokens: int, itls: list[float]) -> RequestRecord:
    return RequestRecord(ok=True, status=200, ttft_s=ttft, latency_s=latency, tokens=tokens,
                         token_source="usage", itls_s=itls)


def test_percentile_interpolates_and_handles_empty():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert percentile([], 50) is None


def test_tpot_excludes_first_token_and_needs_two():
    assert tpot_s(chat_record(0.1, 1.1, 11, [])) == pytest.approx(0.1)
    assert tpot_s(chat_record(0.1, 0.1, 1, [])) is None
    assert tpot_s(RequestRecord(ok=False, error="timeout")) is None


def test_errors_by_cause_counts_failures_only():
    recs = [RequestRecord(ok=True), RequestRecord(error="http_503"), RequestRecord(error="http_503"),
            RequestRecord(error="timeout"), RequestRecord()]
    assert errors_by_cause(recs) == {"http_503": 2, "timeout": 1, "unknown": 1}


def test_summarize_chat_aggregates_ok_requests():
    recs = [chat_record(0.1, 1.0, 10, [0.1] * 9), chat_record(0.3, 2.0, 30, [0.05] * 29),
            RequestRecord(error="http_500", latency_s=0.01)]
    s = summarize_chat(recs, wall_s=2.0)
    assert (s["requests_ok"], s["requests_failed"]) == (2, 1)
    assert s["gen_tok_s"] == 20.0          # 40 tokens over the 2 s wall, not per-request sums
    assert s["req_s"] == 1.0
    assert s["tokens_mean"] == 20.0
    assert s["ttft_p50_ms"] == pytest.approx(200.0)
    assert s["latency_p50_ms"] == pytest.approx(1500.0)
    assert s["itl_p50_ms"] == pytest.approx(50.0)   # pooled gaps: 29 of 0.05 s outvote 9 of 0.1 s
    assert s["errors"] == {"http_500": 1}
    assert s["token_source"] == ["usage"]


def test_summarize_chat_all_failed_is_serializable():
    s = summarize_chat([RequestRecord(error="connect")], wall_s=0.5)
    assert s["gen_tok_s"] == 0.0 and s["ttft_p50_ms"] is None and s["tokens_mean"] is None
    json.dumps(s)


def test_summarize_embeddings_counts_texts():
    recs = [RequestRecord(ok=True, latency_s=0.01, items=4), RequestRecord(ok=True, latency_s=0.03, items=4)]
    s = summarize_embeddings(recs, wall_s=0.04)
    assert s["texts_s"] == 200.0 and s["req_s"] == 50.0
    assert s["latency_p50_ms"] == pytest.approx(20.0)


def test_parse_sse_line():
    assert parse_sse_line("data: [DONE]") is DONE
    assert parse_sse_line('data: {"a": 1}') == {"a": 1}
    assert parse_sse_line('data:{"a": 1}') == {"a": 1}
    assert parse_sse_line("") is None
    assert parse_sse_line(": keep-alive") is None
    assert parse_sse_line("event: ping") is None


def test_chunk_content_chat_and_completions():
    assert chunk_content({"choices": [{"delta": {"content": "Hi"}}]}) == "Hi"
    assert chunk_content({"choices": [{"delta": {"role": "assistant", "content": ""}}]}) == ""
    assert chunk_content({"choices": [{"delta": {}, "finish_reason": "stop"}]}) == ""
    assert chunk_content({"choices": [], "usage": {"completion_tokens": 3}}) == ""
    assert chunk_content({"choices": [{"text": "abc"}]}) == "abc"


def test_error_cause_names():
    req = httpx.Request("GET", "http://127.0.0.1")
    assert error_cause(TimeoutError()) == "timeout"
    assert error_cause(httpx.ReadTimeout("t", request=req)) == "timeout"
    assert error_cause(httpx.ConnectError("c", request=req)) == "connect"
    assert error_cause(httpx.RemoteProtocolError("p", request=req)) == "protocol"
    assert error_cause(ValueError()) == "ValueError"


def test_results_table_has_one_row_per_result():
    chat = LoadResult("chat", "ours", "u", "m", 4, 2, 16, 2.0, [chat_record(0.1, 1.0, 16, [0.05])])
    emb = LoadResult("embeddings", "ours", "u", "e", 1, 1, None, 1.0,
                     [RequestRecord(ok=True, latency_s=0.01, items=1), RequestRecord(error="http_429")])
    table = results_table([chat, emb])
    assert "gen tok/s" in table and "texts/s" in table
    assert "| ours | 4 | 1/0 | 8.0 |" in table
    assert "http_429: 1" in table


def test_closed_loop_sends_each_request_once_with_bounded_concurrency():
    in_flight = peak = 0
    sent: list[int] = []

    async def send(i: int) -> RequestRecord:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        sent.append(i)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return RequestRecord(ok=True, items=i)

    records, wall = asyncio.run(_closed_loop(send, concurrency=3, n_requests=10, deadline_s=60))
    assert sorted(sent) == list(range(10)) and [r.items for r in records] == list(range(10))
    assert peak == 3 and wall > 0


def test_closed_loop_stops_taking_work_after_deadline():
    async def send(i: int) -> RequestRecord:
        await asyncio.sleep(0.02)
        return RequestRecord(ok=True)

    records, _ = asyncio.run(_closed_loop(send, concurrency=1, n_requests=1000, deadline_s=0.05))
    assert 1 <= len(records) <= 5


def test_a_refused_request_comes_back_after_retry_after_and_counts_from_its_first_try():
    """A fake server: 503 + Retry-After twice, then a streamed answer."""
    import asyncio

    import httpx

    from bench.loadgen import chat_request_retrying

    tries = []

    def handler(request: httpx.Request) -> httpx.Response:
        tries.append(request)
        if len(tries) <= 2:
            return httpx.Response(503, headers={"Retry-After": "0.05"}, json={"error": {}})
        body = ('data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
                'data: {"choices": [], "usage": {"completion_tokens": 1}}\n\ndata: [DONE]\n\n')
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://x") as client:
            return await chat_request_retrying(client, "m", "q", 4, 0.0, timeout_s=10)

    rec = asyncio.run(go())
    assert rec.ok and rec.refusals == 2 and len(tries) == 3
    assert rec.ttft_s >= 0.1 and rec.latency_s >= rec.ttft_s  # the two waits are counted
