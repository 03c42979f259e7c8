"""Bounded load/soak test on loopback: minutes of mixed traffic (plain and streamed chat,
completions, embeddings, streams cancelled mid-way, some bad requests) against the app as
`configs/local.yaml` runs it; reports requests ok/failed by cause, p99 latency and the memory
of every Ray worker over time.

    python -m bench.soak --minutes 3     # writes bench/results/soak.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections import Counter

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from serve_app.proxy_refusal import CALLBACK, CALLBACK_ENV  # noqa: E402

from .common import machine, markdown_table, write  # noqa: E402
from .peer import served_args  # noqa: E402

# as `make serve` runs it: the proxy gates generation requests (serve_app/proxy_refusal.py)
os.environ.setdefault(CALLBACK_ENV, CALLBACK)

PORT = 8769
CHAT, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"
TOPICS = ["the moon", "bread", "rivers", "chess", "volcanoes", "bees", "trains", "jazz", "glaciers"]


def ray_rss_mb() -> float:
    """Resident memory of the Ray workers and raylet on this machine."""
    total = 0
    for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "ray::" in cmd or "raylet" in cmd or "default_worker" in cmd or "gcs_server" in cmd:
            total += proc.info["memory_info"].rss
    return total / 2**20


async def one_request(client: httpx.AsyncClient, rng: random.Random) -> tuple[str, float]:
    kind = rng.choices(["chat", "stream", "cancel", "completion", "embed", "bad"],
                       weights=[30, 25, 10, 10, 20, 5])[0]
    topic = rng.choice(TOPICS)
    question = {"role": "user", "content": f"Tell me something about {topic} ({rng.randint(0, 50)})."}
    start = time.perf_counter()
    try:
        if kind in ("chat", "bad"):
            body = {"model": CHAT, "messages": [question], "max_tokens": rng.randint(8, 48),
                    "temperature": rng.choice([0, 0.7])}
            if kind == "bad":
                body["temperature"] = 9
            r = await client.post("/v1/chat/completions", json=body)
            ok = r.status_code == (400 if kind == "bad" else 200)
            return (f"{kind} ok" if ok else f"{kind} http {r.status_code}"), time.perf_counter() - start
        if kind in ("stream", "cancel"):
            body = {"model": CHAT, "messages": [question], "max_tokens": 64, "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    return f"{kind} http {r.status_code}", time.perf_counter() - start
                n = 0
                async for line in r.aiter_lines():
                    n += line.startswith("data: ")
                    if kind == "cancel" and n >= 4:
                        break  # client walks away mid-stream
                    if '"error"' in line:
                        return f"{kind} error event", time.perf_counter() - start
            return f"{kind} ok", time.perf_counter() - start
        if kind == "completion":
            r = await client.post("/v1/completions", json={"model": CHAT, "prompt": f"About {topic}:",
                                                           "max_tokens": 16})
        else:
            r = await client.post("/v1/embeddings", json={"model": EMBED, "input": [question["content"]] * 4})
        return (f"{kind} ok" if r.status_code == 200 else f"{kind} http {r.status_code}"), \
            time.perf_counter() - start
    except httpx.HTTPError as exc:
        return f"{kind} transport {type(exc).__name__}", time.perf_counter() - start


async def soak(url: str, minutes: float, concurrency: int) -> dict:
    outcomes: Counter = Counter()
    latencies: list[float] = []
    memory: list[tuple[float, float]] = []
    stop_at = time.perf_counter() + minutes * 60
    t0 = time.perf_counter()

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            while time.perf_counter() < stop_at:
                outcome, seconds = await one_request(client, rng)
                outcomes[outcome] += 1
                latencies.append(seconds)

    async def sample_memory() -> None:
        while time.perf_counter() < stop_at:
            memory.append((round(time.perf_counter() - t0, 1), round(ray_rss_mb(), 1)))
            await asyncio.sleep(10)

    await asyncio.gather(sample_memory(), *(worker(i) for i in range(concurrency)))
    memory.append((round(time.perf_counter() - t0, 1), round(ray_rss_mb(), 1)))
    first_third = [m for t, m in memory if t <= minutes * 20] or [memory[0][1]]
    return {"minutes": minutes, "concurrency": concurrency, "requests": sum(outcomes.values()),
            "outcomes": dict(outcomes), "p50_s": round(float(np.percentile(latencies, 50)), 3),
            "p99_s": round(float(np.percentile(latencies, 99)), 3), "memory_mb": memory,
            "memory_growth_mb_after_warmup": round(memory[-1][1] - max(first_third), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=12)
    args = ap.parse_args()
    import ray
    from ray import serve

    from serve_app.app import build_graph

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    cache_dir = tempfile.mkdtemp(prefix="soak-cache-")  # never the user's ~/.cache store
    served = served_args()  # what `make serve` serves, with a store of its own
    served["cache"] = {**served.get("cache", {}), "data_dir": cache_dir}
    serve.run(build_graph(served), name="soak", route_prefix="/")
    result = asyncio.run(soak(f"http://127.0.0.1:{PORT}", args.minutes, args.concurrency))
    serve.shutdown()
    failed = {k: v for k, v in result["outcomes"].items() if not k.endswith(" ok")}
    rows = [[k, v] for k, v in sorted(result["outcomes"].items())]
    table = markdown_table(["outcome", "requests"], rows)
    table += (f"\n{result['requests']} requests in {args.minutes} min at {args.concurrency} concurrent "
              f"clients; p50 {result['p50_s']} s, p99 {result['p99_s']} s; failures: {failed or 'none'}; "
              f"Ray processes' RSS {result['memory_mb'][0][1]} -> {result['memory_mb'][-1][1]} MB "
              f"(growth after warm-up {result['memory_growth_mb_after_warmup']} MB).\n")
    write("soak", {"machine": machine(), **result}, table)


if __name__ == "__main__":
    main()
