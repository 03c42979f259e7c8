"""Closed-loop HTTP load generator for any OpenAI-compatible server (ours, llama.cpp's, ...).

`concurrency` workers each send requests back to back until `n_requests` are done (or the
deadline passes), so the offered load is "N users who never think", the usual serving
benchmark. Chat requests stream; per request we record TTFT, latency, generated tokens,
inter-token latencies and the error cause, and aggregate them into a `LoadResult`.

    python -m bench.loadgen --url http://127.0.0.1:8000 --model smollm2-135m-instruct \
        --concurrency 1 4 16 --requests 32 --max-tokens 64
    python -m bench.loadgen --peer --concurrency 1 4 --requests 8 --max-tokens 32   # llama.cpp

Only plain httpx + numpy: it must run in any venv that can reach the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np

DEFAULT_PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a bicycle works, part by part.",
    "Describe the water cycle to a ten-year-old, step by step.",
    "List twenty fun facts about the ocean and explain each one.",
    "Write a detailed recipe for bread, with tips for beginners.",
    "Tell me about the history of the printing press and why it mattered.",
    "Give me a long packing list for a week of hiking, with reasons.",
    "Write a letter to a friend describing your favourite city.",
]
DEFAULT_TEXTS = [f"sentence number {i} about embeddings, vector search and retrieval" for i in range(64)]


# -- per-request records and statistics (pure; unit-tested) -------------------------------------
@dataclass
class RequestRecord:
    ok: bool = False
    status: int | None = None
    error: str | None = None          # cause, e.g. "http_503", "timeout", "connect"
    ttft_s: float | None = None       # first non-empty content delta (chat) or the response (others)
    latency_s: float | None = None
    tokens: int = 0                   # generated tokens
    token_source: str = "none"        # "usage" when the server reported it, else "deltas"
    itls_s: list[float] = field(default_factory=list)  # gaps between content chunks
    items: int = 0                    # texts embedded (embedding requests)
    refusals: int = 0                 # 503s answered before this try (retried after Retry-After)
    retry_after_s: float | None = None  # a refusal's Retry-After header


def percentile(values: list[float] | np.ndarray, q: float) -> float | None:
    """Linear-interpolated percentile, None for no data (so empty runs serialize as null)."""
    arr = np.asarray(values, dtype=float)
    return float(np.percentile(arr, q)) if arr.size else None


def tpot_s(rec: RequestRecord) -> float | None:
    """Time per output token after the first: robust to servers that send several tokens per
    chunk, where raw chunk gaps (ITL) would overstate the per-token time."""
    if rec.ttft_s is None or rec.latency_s is None or rec.tokens < 2:
        return None
    return (rec.latency_s - rec.ttft_s) / (rec.tokens - 1)


def errors_by_cause(records: list[RequestRecord]) -> dict[str, int]:
    return dict(Counter(r.error or "unknown" for r in records if not r.ok))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def summarize_chat(records: list[RequestRecord], wall_s: float) -> dict:
    ok = [r for r in records if r.ok]
    tokens = sum(r.tokens for r in ok)
    itls = [gap for r in ok for gap in r.itls_s]
    tpots = [t for r in ok if (t := tpot_s(r)) is not None]
    return {
        "requests_ok": len(ok), "requests_failed": len(records) - len(ok),
        "wall_s": round(wall_s, 3),
        "gen_tok_s": round(tokens / wall_s, 1) if wall_s > 0 else None,
        "req_s": round(len(ok) / wall_s, 2) if wall_s > 0 else None,
        "tokens_total": tokens,
        "tokens_mean": round(tokens / len(ok), 1) if ok else None,
        "ttft_p50_ms": _ms(percentile([r.ttft_s for r in ok if r.ttft_s is not None], 50)),
        "ttft_p99_ms": _ms(percentile([r.ttft_s for r in ok if r.ttft_s is not None], 99)),
        "latency_p50_ms": _ms(percentile([r.latency_s for r in ok], 50)),
        "latency_p99_ms": _ms(percentile([r.latency_s for r in ok], 99)),
        "itl_p50_ms": _ms(percentile(itls, 50)),
        "itl_p99_ms": _ms(percentile(itls, 99)),
        "tpot_p50_ms": _ms(percentile(tpots, 50)),
        "token_source": sorted({r.token_source for r in ok}),
        "errors": errors_by_cause(records),
    }


def summarize_embeddings(records: list[RequestRecord], wall_s: float) -> dict:
    ok = [r for r in records if r.ok]
    items = sum(r.items for r in ok)
    return {
        "requests_ok": len(ok), "requests_failed": len(records) - len(ok),
        "wall_s": round(wall_s, 3),
        "texts_s": round(items / wall_s, 1) if wall_s > 0 else None,
        "req_s": round(len(ok) / wall_s, 2) if wall_s > 0 else None,
        "latency_p50_ms": _ms(percentile([r.latency_s for r in ok], 50)),
        "latency_p99_ms": _ms(percentile([r.latency_s for r in ok], 99)),
        "errors": errors_by_cause(records),
    }


@dataclass
class LoadResult:
    kind: str                 # "chat" or "embeddings"
    label: str                # which server, for tables that compare several
    base_url: str
    model: str
    concurrency: int
    n_requests: int
    max_tokens: int | None
    wall_s: float
    records: list[RequestRecord]

    def summary(self) -> dict:
        stats = (summarize_chat if self.kind == "chat" else summarize_embeddings)(self.records, self.wall_s)
        return {"kind": self.kind, "label": self.label, "base_url": self.base_url, "model": self.model,
                "concurrency": self.concurrency, "n_requests": self.n_requests,
                "max_tokens": self.max_tokens, **stats}

    def to_dict(self, with_records: bool = False) -> dict:
        out = self.summary()
        if with_records:
            out["records"] = [asdict(r) for r in self.records]
        return out


# -- SSE parsing ---------------------------------------------------------------------------------
DONE = object()


def parse_sse_line(line: str) -> dict | object | None:
    """One SSE line -> the JSON event, DONE for the terminator, None for anything else
    (blank keep-alive lines, comments, `event:` fields)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return DONE
    return json.loads(data) if data else None


def chunk_content(event: dict) -> str:
    """Generated text in a chat (`delta.content`) or completions (`text`) chunk."""
    texts = []
    for choice in event.get("choices") or []:
        delta = choice.get("delta") or {}
        texts.append(delta.get("content") or choice.get("text") or "")
    return "".join(texts)


def error_cause(exc: BaseException) -> str:
    """Coarse, stable cause names so runs can be compared by error counts."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "protocol"    # server closed the stream mid-response
    if isinstance(exc, json.JSONDecodeError):
        return "bad_json"
    return type(exc).__name__


# -- one request ---------------------------------------------------------------------------------
async def _chat_stream(client: httpx.AsyncClient, body: dict, rec: RequestRecord, t0: float) -> None:
    last = None
    deltas = 0
    done = False
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        rec.status = resp.status_code
        if resp.status_code != 200:
            await resp.aread()
            rec.error = f"http_{resp.status_code}"
            rec.retry_after_s = float(resp.headers.get("retry-after") or 1)
            return
        async for line in resp.aiter_lines():
            event = parse_sse_line(line)
            if event is DONE:
                done = True
                break
            if not isinstance(event, dict):
                continue
            if "error" in event:       # some servers report failures inside a 200 stream
                rec.error = "stream_error"
                return
            if usage := event.get("usage"):
                rec.tokens, rec.token_source = int(usage.get("completion_tokens") or 0), "usage"
            if chunk_content(event):
                now = time.perf_counter()
                if last is None:
                    rec.ttft_s = now - t0
                else:
                    rec.itls_s.append(now - last)
                last, deltas = now, deltas + 1
    if not done:    # connection closed before [DONE]: a cut-off answer, not a served one
        rec.error = "truncated"
        return
    if rec.token_source != "usage":
        rec.tokens, rec.token_source = deltas, "deltas"
    rec.ok = True


async def _chat_plain(client: httpx.AsyncClient, body: dict, rec: RequestRecord, t0: float) -> None:
    resp = await client.post("/v1/chat/completions", json=body)
    rec.status = resp.status_code
    if resp.status_code != 200:
        rec.error = f"http_{resp.status_code}"
        return
    # no TTFT without streaming: the first token arrives with the last, so leave it unmeasured
    rec.tokens = int((resp.json().get("usage") or {}).get("completion_tokens") or 0)
    rec.token_source = "usage"
    rec.ok = True


async def chat_request(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int,
                       temperature: float, stream: bool, timeout_s: float,
                       extra_body: dict | None = None) -> RequestRecord:
    body: dict = {"model": model, "messages": [{"role": "user", "content": prompt}],
                  "max_tokens": max_tokens, "temperature": temperature, "stream": stream,
                  **(extra_body or {})}
    if stream:
        body["stream_options"] = {"include_usage": True}
    rec = RequestRecord()
    t0 = time.perf_counter()
    try:
        # httpx timeouts are per read; this bounds the whole request, streaming included
        async with asyncio.timeout(timeout_s):
            await (_chat_stream if stream else _chat_plain)(client, body, rec, t0)
    except (TimeoutError, httpx.HTTPError, json.JSONDecodeError) as exc:
        rec.ok, rec.error = False, error_cause(exc)
    rec.latency_s = time.perf_counter() - t0
    if rec.ok and stream and rec.ttft_s is None:
        rec.ok, rec.error = False, "no_content"   # 200 but nothing generated: not a served request
    return rec


async def chat_request_retrying(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int,
                                temperature: float, timeout_s: float, extra_body: dict | None = None,
                                max_refusals: int = 50) -> RequestRecord:
    """A streamed chat request that, refused with 503, comes back after the server's Retry-After,
    as OpenAI's client does (it retries twice by default; this one keeps trying). TTFT and latency
    count from the first try; `refusals` says how many 503s came before."""
    t0 = time.perf_counter()
    for refusals in range(max_refusals + 1):
        left = timeout_s - (time.perf_counter() - t0)
        rec = await chat_request(client, model, prompt, max_tokens, temperature, True, left, extra_body)
        rec.refusals = refusals
        if rec.status != 503 or refusals == max_refusals or left <= (rec.retry_after_s or 1.0):
            break
        await asyncio.sleep(rec.retry_after_s or 1.0)
    waited = time.perf_counter() - t0 - (rec.latency_s or 0.0)
    rec.latency_s = (rec.latency_s or 0.0) + waited
    if rec.ttft_s is not None:
        rec.ttft_s += waited
    return rec


async def embedding_request(client: httpx.AsyncClient, model: str, texts: list[str],
                            timeout_s: float) -> RequestRecord:
    rec = RequestRecord()
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            resp = await client.post("/v1/embeddings", json={"model": model, "input": texts})
            rec.status = resp.status_code
            if resp.status_code == 200:
                rec.items = len(resp.json().get("data") or [])
                rec.ok = rec.items == len(texts)
                rec.error = None if rec.ok else "short_response"
            else:
                rec.error = f"http_{resp.status_code}"
    except (TimeoutError, httpx.HTTPError, json.JSONDecodeError) as exc:
        rec.error = error_cause(exc)
    rec.latency_s = time.perf_counter() - t0
    return rec


# -- closed-loop driver --------------------------------------------------------------------------
def _client(base_url: str, concurrency: int, headers: dict | None, timeout_s: float) -> httpx.AsyncClient:
    # One pooled connection per worker; the Authorization default keeps servers that demand a
    # key (any key) happy.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=base_url.rstrip("/"), limits=limits,
                             headers={"Authorization": "Bearer unused", **(headers or {})},
                             timeout=httpx.Timeout(timeout_s, connect=10.0))


async def _closed_loop(send: Callable[[int], Awaitable[RequestRecord]], concurrency: int,
                       n_requests: int, deadline_s: float) -> tuple[list[RequestRecord], float]:
    """Run `send(i)` for i in range(n_requests) with `concurrency` workers back to back; stop
    taking new work after deadline_s. Returns the records (in send order) and the wall time."""
    records: list[RequestRecord | None] = [None] * n_requests
    next_index = 0
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal next_index
        while next_index < n_requests and time.perf_counter() - start < deadline_s:
            i, next_index = next_index, next_index + 1   # no await in between: atomic under asyncio
            records[i] = await send(i)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return [r for r in records if r is not None], time.perf_counter() - start


async def run_chat_load(base_url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int,
                        n_requests: int, temperature: float = 0.0, headers: dict | None = None,
                        stream: bool = True, timeout_s: float = 120.0, deadline_s: float = 600.0,
                        warmup: int = 1, label: str = "", extra_body: dict | None = None,
                        retry_refused: bool = False) -> LoadResult:
    """Closed-loop chat load. `warmup` requests go first, one at a time and unrecorded, so lazy
    model loading or JIT on the server does not land in the first measured TTFT. `extra_body`
    adds fields to every request (e.g. ignore_eos). retry_refused: a 503 is retried after its
    Retry-After (streamed requests; `chat_request_retrying`)."""
    async with _client(base_url, concurrency, headers, timeout_s) as client:
        for i in range(warmup):
            await chat_request(client, model, prompts[i % len(prompts)], max_tokens, temperature,
                               stream, timeout_s, extra_body)

        async def send(i: int) -> RequestRecord:
            if retry_refused and stream:
                return await chat_request_retrying(client, model, prompts[i % len(prompts)], max_tokens,
                                                   temperature, timeout_s, extra_body)
            return await chat_request(client, model, prompts[i % len(prompts)], max_tokens, temperature,
                                      stream, timeout_s, extra_body)

        records, wall = await _closed_loop(send, concurrency, n_requests, deadline_s)
    return LoadResult("chat", label or base_url, base_url, model, concurrency, n_requests, max_tokens,
                      wall, records)


async def run_embedding_load(base_url: str, model: str, texts: list[str], concurrency: int, n_requests: int,
                             batch_size: int = 1, headers: dict | None = None, timeout_s: float = 60.0,
                             deadline_s: float = 300.0, warmup: int = 1, label: str = "") -> LoadResult:
    """Closed-loop embedding load; each request embeds `batch_size` consecutive texts."""
    def batch(i: int) -> list[str]:
        return [texts[(i * batch_size + j) % len(texts)] for j in range(batch_size)]

    async with _client(base_url, concurrency, headers, timeout_s) as client:
        for i in range(warmup):
            await embedding_request(client, model, batch(i), timeout_s)

        async def send(i: int) -> RequestRecord:
            return await embedding_request(client, model, batch(i), timeout_s)

        records, wall = await _closed_loop(send, concurrency, n_requests, deadline_s)
    return LoadResult("embeddings", label or base_url, base_url, model, concurrency, n_requests, None,
                      wall, records)


# -- reporting -----------------------------------------------------------------------------------
CHAT_COLUMNS = [("server", "label"), ("conc", "concurrency"), ("ok/err", None), ("gen tok/s", "gen_tok_s"),
                ("req/s", "req_s"), ("tok/req", "tokens_mean"), ("TTFT p50 (ms)", "ttft_p50_ms"),
                ("TTFT p99 (ms)", "ttft_p99_ms"), ("lat p50 (ms)", "latency_p50_ms"),
                ("lat p99 (ms)", "latency_p99_ms"), ("ITL p50 (ms)", "itl_p50_ms"),
                ("TPOT p50 (ms)", "tpot_p50_ms"), ("errors", "errors")]
EMBED_COLUMNS = [("server", "label"), ("conc", "concurrency"), ("ok/err", None), ("texts/s", "texts_s"),
                 ("req/s", "req_s"), ("lat p50 (ms)", "latency_p50_ms"), ("lat p99 (ms)", "latency_p99_ms"),
                 ("errors", "errors")]


def _cell(summary: dict, key: str | None) -> object:
    if key is None:
        return f"{summary['requests_ok']}/{summary['requests_failed']}"
    value = summary.get(key)
    if key == "errors":
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    return "-" if value is None else value


def results_table(results: list[LoadResult]) -> str:
    """Markdown tables, one per kind present, in the order the results were run."""
    from .common import markdown_table

    parts = []
    for kind, columns in (("chat", CHAT_COLUMNS), ("embeddings", EMBED_COLUMNS)):
        rows = [[_cell(r.summary(), key) for _, key in columns] for r in results if r.kind == kind]
        if rows:
            parts.append(markdown_table([title for title, _ in columns], rows))
    return "\n".join(parts)


def write_results(name: str, results: list[LoadResult], meta: dict | None = None,
                  with_records: bool = False) -> None:
    """bench/results/<name>.json (summaries, optionally raw records) and <name>.md."""
    from .common import write

    # the load average says whether something else shared the 2 cores during the run
    payload = {"meta": {**_machine(), "loadavg_1m_at_end": round(os.getloadavg()[0], 2), **(meta or {})},
               "results": [r.to_dict(with_records) for r in results]}
    write(name, payload, results_table(results))


def _machine() -> dict:
    try:
        from .common import machine
        return machine()
    except ImportError:   # common.machine() wants onnxruntime, absent from e.g. the peer's venv
        return {}


# -- CLI -----------------------------------------------------------------------------------------
def server_up(base_url: str, timeout_s: float = 3.0) -> bool:
    try:
        return httpx.get(base_url.rstrip("/") + "/v1/models", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def _target(args: argparse.Namespace) -> Iterator[str]:
    """The base URL to load: the given one, or a llama.cpp peer started for the run."""
    if not args.peer:
        yield args.url
        return
    from .peer_llamacpp import llamacpp_server

    with llamacpp_server(port=args.peer_port, model_alias=args.model) as url:
        yield url


async def _run_all(args: argparse.Namespace, url: str, prompts: list[str]) -> list[LoadResult]:
    label = args.label or ("llama.cpp" if args.peer else url)
    results = []
    for conc in args.concurrency:
        res = await run_chat_load(url, args.model, prompts, conc, args.max_tokens, args.requests,
                                  temperature=args.temperature, stream=not args.no_stream,
                                  timeout_s=args.timeout, deadline_s=args.deadline, label=label,
                                  headers={"Cache-Control": "no-store"} if args.no_cache else None)
        print(json.dumps(res.summary()), flush=True)
        results.append(res)
    if args.embed_model:
        for conc in args.concurrency:
            res = await run_embedding_load(url, args.embed_model, DEFAULT_TEXTS, conc, args.embed_requests,
                                           batch_size=args.embed_batch, timeout_s=args.timeout,
                                           deadline_s=args.deadline, label=label)
            print(json.dumps(res.summary()), flush=True)
            results.append(res)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=32, help="measured requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--no-stream", action="store_true")
    ap.add_argument("--prompts-file", help="one prompt per line (default: built-in long-answer prompts)")
    ap.add_argument("--embed-model", help="also load /v1/embeddings with this model, e.g. all-minilm-l6-v2")
    ap.add_argument("--embed-requests", type=int, default=64)
    ap.add_argument("--embed-batch", type=int, default=1, help="texts per embedding request")
    ap.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    ap.add_argument("--deadline", type=float, default=600.0, help="per concurrency level, seconds")
    ap.add_argument("--peer", action="store_true", help="start the llama.cpp peer, load it instead of --url")
    ap.add_argument("--peer-port", type=int, default=8090)
    ap.add_argument("--label", help="server name in the table")
    ap.add_argument("--name", default="loadgen", help="bench/results/<name>.{json,md}")
    ap.add_argument("--records", action="store_true", help="keep per-request records in the JSON")
    ap.add_argument("--no-cache", action="store_true",
                    help="send Cache-Control: no-store, so repeated prompts are generated, not cache hits")
    args = ap.parse_args(argv)

    prompts = DEFAULT_PROMPTS
    if args.prompts_file:
        prompts = [p for p in open(args.prompts_file).read().splitlines() if p.strip()]
    with _target(args) as url:
        if not server_up(url):
            raise SystemExit(f"no OpenAI-compatible server answers at {url}/v1/models")
        results = asyncio.run(_run_all(args, url, prompts))
    meta = {"requests": args.requests, "max_tokens": args.max_tokens, "temperature": args.temperature,
            "stream": not args.no_stream, "no_cache": args.no_cache}
    write_results(args.name, results, meta, with_records=args.records)


if __name__ == "__main__":
    main()
