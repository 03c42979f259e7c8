"""Overload benchmark over HTTP from a separate async client (issue 15):

  flood:    N chat requests at C concurrent (default 400 at 200, max_tokens 256, streaming,
            `Cache-Control: no-store`): how fast refusals come (503/429), when accepted ones get
            their first token, whether anything accepted is lost; with the ingress' early refusal
            on and off (off: every refusal is the engine's, after tokenization and a hop);
  fairness: key A keeps K long requests in flight (resending as soon as one ends or is refused),
            key B asks short questions one after another: B's time to first token;
  quota:    a key capped at Q requests/min sends Q+5 at once while the other key keeps asking.

    python -m bench.overload                # writes bench/results/overload.{json,md,png}
    python -m bench.overload --small        # a quick check: 40 at 20, 24 in flight, 20 s
    python -m bench.overload --llm-nice 0 --out overload_nice0   # the model at the front's priority
    python -m bench.overload --ingress-refusal --out overload_ingress   # refusals in the Ingress

The app is configs/local.yaml's graph and args (engine defaults: 16 slots, max_queue_wait_s 10;
its variant, spinning and llm_nice; early refusals in Serve's proxy, as `make serve` runs it)
with two API keys and a capped third one; the response cache
is off (every request would be no-store). The client is aiohttp: on the same 2 cores, httpx's
async client spent ~15 ms of CPU per request at 200 connections (aiohttp ~0.4 ms), taking the
cores the server's refusals need. Figures taken on a machine busy with other work are provisional.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import time
from dataclasses import asdict, dataclass

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import aiohttp  # noqa: E402

from serve_app.proxy_refusal import CALLBACK, CALLBACK_ENV  # noqa: E402

from .common import RESULTS, machine, markdown_table, write  # noqa: E402
from .loadgen import percentile  # noqa: E402
from .peer import served_args  # noqa: E402

# as `make serve`: Serve's proxy makes the early refusal (--ingress-refusal: the Ingress does)
os.environ.setdefault(CALLBACK_ENV, CALLBACK)

CHAT = "smollm2-135m-instruct"
PORT = 8767
KEYS = {"sk-bench-a": "tenant-a", "sk-bench-b": "tenant-b", "sk-bench-capped": "capped"}
LONG = "Write a long story about a lighthouse keeper who finds a message in a bottle."
SHORT = "What is the capital of France?"


@dataclass
class Record:
    scenario: str
    key: str
    start_s: float  # since the scenario began
    status: int | None = None
    code: str | None = None  # error code (body or SSE event), None when answered
    ttft_s: float | None = None
    latency_s: float | None = None
    tokens: int = 0
    finish: str | None = None  # "length"/"stop" for a full answer


def error_code(raw: bytes, status: int) -> str:
    """The OpenAI-style error code of a refusal, or http_<status> for a body that has none (Serve's
    proxy answers its own 503 in plain text when a deployment's queue is full)."""
    try:
        return json.loads(raw)["error"]["code"] or f"http_{status}"
    except (ValueError, KeyError, TypeError):
        return f"http_{status}"


def session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections + 8),
                                 timeout=aiohttp.ClientTimeout(total=600))


async def one(client: aiohttp.ClientSession, url: str, key: str, scenario: str, t0: float,
              prompt: str, max_tokens: int) -> Record:
    rec = Record(scenario, key, time.perf_counter() - t0)
    start = time.perf_counter()
    body = {"model": CHAT, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-store"}
    try:
        async with client.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
            rec.status = r.status
            if r.status != 200:
                rec.code = error_code(await r.read(), r.status)
            else:
                async for raw in r.content:  # one SSE line at a time
                    line = raw.decode().strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        rec.code = event["error"].get("code") or "stream_error"
                        continue
                    for choice in event.get("choices", []):
                        if choice["delta"].get("content") and rec.ttft_s is None:
                            rec.ttft_s = time.perf_counter() - start
                        rec.finish = choice.get("finish_reason") or rec.finish
                    if event.get("usage"):
                        rec.tokens = event["usage"]["completion_tokens"]
    except (TimeoutError, aiohttp.ClientError) as exc:
        rec.code = f"transport_{type(exc).__name__}"
    rec.latency_s = time.perf_counter() - start
    return rec


async def flood(url: str, n: int, concurrency: int, max_tokens: int, label: str) -> list[Record]:
    async with session(concurrency) as client:
        gate = asyncio.Semaphore(concurrency)
        t0 = time.perf_counter()

        async def gated(i: int) -> Record:
            async with gate:
                return await one(client, url, "sk-bench-a", label, t0, LONG, max_tokens)

        return list(await asyncio.gather(*(gated(i) for i in range(n))))


async def fairness(url: str, in_flight: int, questions: int, max_tokens: int,
                   seconds: float) -> list[Record]:
    async with session(in_flight) as client:
        t0 = time.perf_counter()
        stop = asyncio.Event()
        records: list[Record] = []

        async def heavy() -> None:
            while not stop.is_set():
                records.append(await one(client, url, "sk-bench-a", "fairness", t0, LONG, max_tokens))
                if records[-1].status != 200:
                    await asyncio.sleep(0.05)  # a refused resend: do not spin

        flood_tasks = [asyncio.create_task(heavy()) for _ in range(in_flight)]
        await asyncio.sleep(min(10.0, seconds / 3))  # the flood fills every slot first
        for _ in range(questions):
            records.append(await one(client, url, "sk-bench-b", "fairness", t0, SHORT, 16))
            await asyncio.sleep(max(0.0, seconds / questions - 2))
        stop.set()
        await asyncio.gather(*flood_tasks)
        return records


async def quota(url: str, capped_per_min: int) -> list[Record]:
    async with session(32) as client:
        t0 = time.perf_counter()
        capped = [one(client, url, "sk-bench-capped", "quota", t0, SHORT, 8)
                  for _ in range(capped_per_min + 5)]
        other = [one(client, url, "sk-bench-b", "quota", t0, SHORT, 8) for _ in range(4)]
        return list(await asyncio.gather(*capped, *other))


def summarize(records: list[Record]) -> dict:
    refused = [r for r in records if r.status in (429, 503)]
    accepted = [r for r in records if r.status == 200]
    lost = [r for r in accepted if r.finish not in ("length", "stop") and r.code is None]
    return {
        "requests": len(records), "accepted": len(accepted),
        "refused_503": sum(r.status == 503 for r in records),
        "refused_429": sum(r.status == 429 for r in records),
        "other": len(records) - len(accepted) - len(refused),
        "refusal_p50_s": percentile([r.latency_s for r in refused], 50),
        "refusal_p99_s": percentile([r.latency_s for r in refused], 99),
        "ttft_p50_s": percentile([r.ttft_s for r in accepted if r.ttft_s is not None], 50),
        "ttft_p99_s": percentile([r.ttft_s for r in accepted if r.ttft_s is not None], 99),
        "ttft_max_s": max((r.ttft_s for r in accepted if r.ttft_s is not None), default=None),
        "accepted_errors": sum(r.code is not None for r in accepted),
        "lost": len(lost),
    }


def plot(records: list[Record], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = sorted({r.scenario for r in records})
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(9, 3.2 * len(scenarios)), squeeze=False)
    for ax, name in zip(axes[:, 0], scenarios, strict=True):
        rs = [r for r in records if r.scenario == name]
        for label, pick, color in (("refused (latency)", lambda r: r.status in (429, 503), "tab:red"),
                                   ("accepted: first token", lambda r: r.status == 200, "tab:blue"),
                                   ("key B: first token", lambda r: r.key == "sk-bench-b"
                                    and r.status == 200, "tab:green")):
            xs = [r.start_s for r in rs if pick(r)]
            ys = [(r.ttft_s if r.status == 200 else r.latency_s) or 0 for r in rs if pick(r)]
            if xs:
                ax.scatter(xs, ys, s=8, label=label, color=color, alpha=0.7)
        ax.set_title(name)
        ax.set_xlabel("request start (s)")
        ax.set_ylabel("seconds")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> None:
    import ray
    from ray import serve

    from serve_app.app import build_graph

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    capped = 10
    served = served_args()
    base = served | {"llm_variant": args.variant or served["llm_variant"],
                     "engine": served.get("engine", {}) | {"max_queue_wait_s": args.max_queue_wait_s},
                     "cache": {"enabled": False}, "api_keys": KEYS,
                     "quotas": {"capped": {"requests_per_min": capped}}}
    if args.llm_nice is not None:
        base["llm_nice"] = args.llm_nice
    base["proxy_refusal"] = not args.ingress_refusal
    # configs/local.yaml's limits on the LLM deployment
    llm_options = {"max_ongoing_requests": 80, "max_queued_requests": 32}
    records: list[Record] = []
    for early in (True, False):
        name = "overload" if early else "overload-late"
        serve.run(build_graph(base | {"early_refusal": early}, llm_options=llm_options), name=name,
                  route_prefix=f"/{name}")
        url = f"http://127.0.0.1:{args.port}/{name}"
        records += await flood(url, args.requests, args.concurrency, args.max_tokens,
                               "flood" if early else "flood (no early refusal)")
        if early:
            records += await fairness(url, args.in_flight, args.questions, args.max_tokens, args.seconds)
            records += await quota(url, capped)
        serve.delete(name)
    serve.shutdown()

    def pick(scenario: str, key: str | None = None) -> list[Record]:
        return [r for r in records if r.scenario == scenario and key in (None, r.key)]

    groups = {"flood": pick("flood"), "flood (no early refusal)": pick("flood (no early refusal)"),
              "fairness: key A": pick("fairness", "sk-bench-a"),
              "fairness: key B": pick("fairness", "sk-bench-b"),
              "quota: capped key": pick("quota", "sk-bench-capped"),
              "quota: other key": pick("quota", "sk-bench-b")}
    summary = {name: summarize(rs) for name, rs in groups.items()}
    fmt = lambda v: "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else v)  # noqa: E731
    cols = ["requests", "accepted", "refused_503", "refused_429", "refusal_p50_s", "refusal_p99_s",
            "ttft_p50_s", "ttft_p99_s", "ttft_max_s", "accepted_errors", "lost"]
    table = markdown_table(["group"] + cols, [[name] + [fmt(s[c]) for c in cols]
                                              for name, s in summary.items()])
    config = {k: getattr(args, k) for k in ("requests", "concurrency", "max_tokens", "in_flight",
                                             "questions", "seconds", "max_queue_wait_s")}
    config |= {k: base[k] for k in ("llm_variant", "llm_spinning", "llm_nice", "proxy_refusal") if k in base}
    head = (f"# Overload ({'small check' if args.small else 'full run'})\n\n{json.dumps(config)}\n\n"
            "Refusal = time to a 503/429; TTFT of accepted requests. Load average (1 min) at the "
            f"end: {os.getloadavg()[0]:.2f}, the run's own load included.\n\n")
    # ~100k requests: their records go to a gzipped JSON-lines file beside the summary (20 MB of
    # plain JSON was most of the repository's size)
    records_file = RESULTS / f"{args.out}_records.jsonl.gz"
    with gzip.open(records_file, "wt") as f:
        f.writelines(json.dumps(asdict(r)) + "\n" for r in records)
    write(args.out, {"machine": machine(), "config": config, "summary": summary,
                     "records": records_file.name}, head + table)
    plot(records, RESULTS / f"{args.out}.png")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--in-flight", type=int, default=100, help="key A's requests kept in flight")
    ap.add_argument("--questions", type=int, default=6, help="key B's short questions, one at a time")
    ap.add_argument("--seconds", type=float, default=60, help="fairness scenario length")
    ap.add_argument("--max-queue-wait-s", type=float, default=10.0)
    ap.add_argument("--variant", default=None, help="default: configs/local.yaml's llm_variant")
    ap.add_argument("--small", action="store_true", help="40 at 20, 24 in flight, 3 questions, 20 s")
    ap.add_argument("--out", default="overload")
    ap.add_argument("--port", type=int, default=PORT)
    ap.add_argument("--llm-nice", type=int, default=None, help="default: configs/local.yaml's "
                    "llm_nice (0 shows what the model's lower CPU priority buys)")
    ap.add_argument("--ingress-refusal", action="store_true", help="early refusals in the Ingress "
                    "replica, not Serve's proxy (proxy_refusal: false)")
    args = ap.parse_args()
    if args.small:
        args.requests, args.concurrency, args.in_flight, args.questions, args.seconds = 40, 20, 24, 3, 20
        args.max_tokens = min(args.max_tokens, 64)
        args.out = args.out if args.out != "overload" else "overload_small"
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
