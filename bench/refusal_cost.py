"""Where a refusal's time goes while the engine decodes a full batch (issue 15, "cheap refusals").

Background: key A keeps enough long streams in flight to fill every slot and the waiting queue,
so both cores decode. Probes, one at a time, from the same machine:
  healthz   GET /healthz: proxy + ingress, no work (the floor of any answer);
  refusal   a chat request that is refused (503), with the ingress' early refusal on: decided
            before tokenization, the cache or a hop;
  refusal (engine)  the same with early refusal off: tokenization + template, a hop to the LLM
            replica (its event loop busy streaming), @serve.batch, the engine's check;
  load hop  the LLM replica's load() through a handle from this driver: one hop's cost.
Then a storm: N refusals at C concurrent (a key over its quota: 429, decided where the early 503
is, in the ingress' middleware) on the idle engine, and the CPU each process spent per refusal
(Serve's proxy, the ingress, the LLM replica, this client). CPU time, unlike latency, holds on a
busy machine; with C open connections a refusal waits for the C-1 before it, so the CPU per
refusal sets the refusal latency.

    python -m bench.refusal_cost [--probes 20] [--storm 600 --at 200]   # bench/results/refusal_cost.*

Figures from a machine busy with other work are provisional.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402

from core.build.artifacts import SERVED_VARIANT  # noqa: E402

from .common import machine, markdown_table, write  # noqa: E402

CHAT = "smollm2-135m-instruct"
PORT = 8768
KEYS = {"sk-a": "a", "sk-capped": "capped"}
HEADERS = {"Authorization": "Bearer sk-a", "Cache-Control": "no-store"}
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def chat(max_tokens: int, stream: bool) -> dict:
    return {"model": CHAT, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "stream": stream, "ignore_eos": True}


async def keep_busy(client: httpx.AsyncClient, url: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            async with client.stream("POST", f"{url}/v1/chat/completions", json=chat(256, True),
                                     headers=HEADERS) as r:
                async for _ in r.aiter_lines():
                    if stop.is_set():
                        break
                if r.status_code != 200:
                    await asyncio.sleep(0.1)
        except httpx.HTTPError:
            await asyncio.sleep(0.1)


async def probe(url: str, llm, n: int, streams: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"healthz": [], "refusal": [], "accepted": [], "load hop": []}
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=streams + 8)) as client:
        stop = asyncio.Event()
        busy = [asyncio.create_task(keep_busy(client, url, stop)) for _ in range(streams)]
        await asyncio.sleep(8)  # slots and queue fill, both cores decode
        for _ in range(n):
            t = time.perf_counter()
            await client.get(f"{url}/healthz")
            out["healthz"].append(time.perf_counter() - t)
            t = time.perf_counter()
            r = await client.post(f"{url}/v1/chat/completions", json=chat(256, False), headers=HEADERS)
            out["refusal" if r.status_code == 503 else "accepted"].append(time.perf_counter() - t)
            t = time.perf_counter()
            await llm.load.remote()
            out["load hop"].append(time.perf_counter() - t)
            await asyncio.sleep(0.2)
        stop.set()
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
    return out


def serve_processes(app: str) -> dict[str, psutil.Process]:
    """This app's Ray actor processes (by their process titles) and this client."""
    found = {"client": psutil.Process()}
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        for name, marker in (("proxy", "ProxyActor"), ("ingress", f"ServeReplica:{app}:Ingress"),
                             ("llm", f"ServeReplica:{app}:LLMDeployment")):
            if marker in title:
                found[name] = proc
    return found


def cpu_s(procs: dict[str, psutil.Process]) -> dict[str, float]:
    return {name: sum(proc.cpu_times()[:2]) for name, proc in procs.items()}


async def storm(url: str, app: str, n: int, concurrency: int) -> dict:
    """n over-quota requests at `concurrency`: CPU ms per refusal by process, and latencies.
    aiohttp: httpx's async client spends ~15 ms of CPU per request at 200 connections."""
    procs = serve_processes(app)
    headers = {"Authorization": "Bearer sk-capped"}
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + 8)) as client:
        async def one(gate: asyncio.Semaphore) -> None:
            async with gate:
                t = time.perf_counter()
                async with client.post(f"{url}/v1/chat/completions", json=chat(8, False),
                                       headers=headers) as r:
                    await r.read()
                    if r.status == 429:
                        latencies.append(time.perf_counter() - t)

        await one(asyncio.Semaphore(1))  # the key's one request a minute: the rest are refused
        before, t0 = cpu_s(procs), time.perf_counter()
        gate = asyncio.Semaphore(concurrency)
        await asyncio.gather(*(one(gate) for _ in range(n)))
        wall, after = time.perf_counter() - t0, cpu_s(procs)
    latencies.sort()
    return {"refusals": len(latencies), "wall_s": wall,
            "p50_s": latencies[len(latencies) // 2], "p99_s": latencies[int(len(latencies) * 0.99)],
            "cpu_ms_per_refusal": {k: (after[k] - before[k]) * 1000 / n for k in after}}


async def main_async(args: argparse.Namespace) -> None:
    import ray
    from ray import serve

    from serve_app.app import build_graph

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    rows, raw = [], {}
    for early in (True, False):
        name = "refusal-early" if early else "refusal-engine"
        args_ = {"device": "cpu", "llm_variant": args.variant, "llm_spinning": False,
                 "engine": {"max_running": args.slots, "max_waiting": 64, "max_queue_wait_s": args.max_wait},
                 "cache": {"enabled": False}, "api_keys": KEYS, "early_refusal": early,
                 "quotas": {"capped": {"requests_per_min": 1}}}
        serve.run(build_graph(args_, llm_options={"max_ongoing_requests": 80}), name=name,
                  route_prefix=f"/{name}")
        llm = serve.get_deployment_handle("LLMDeployment", app_name=name)
        got = await probe(f"http://127.0.0.1:{args.port}/{name}", llm, args.probes, args.streams)
        if early:
            raw["storm"] = await storm(f"http://127.0.0.1:{args.port}/{name}", name, args.storm, args.at)
        serve.delete(name)
        raw[name] = got
        label = "early refusal on" if early else "early refusal off (engine decides)"
        for what, values in got.items():
            if values:
                rows.append([label, what, len(values), f"{statistics.median(values) * 1000:.1f}",
                             f"{max(values) * 1000:.1f}"])
    serve.shutdown()
    table = markdown_table(["app", "probe", "n", "median ms", "max ms"], rows)
    st = raw["storm"]
    table += (f"\n\nStorm: {st['refusals']} refusals (429) at {args.at} concurrent in {st['wall_s']:.1f} s, "
              f"p50 {st['p50_s']:.2f} s, p99 {st['p99_s']:.2f} s; CPU ms per refusal: "
              + ", ".join(f"{k} {v:.2f}" for k, v in st["cpu_ms_per_refusal"].items()) + "\n")
    head = (f"# Where a refusal's time goes\n\n{args.streams} streams of 256 tokens keep "
            f"{args.slots} slots and the queue full (max_queue_wait_s {args.max_wait}); probes one at a "
            "time. Provisional on a busy machine.\n\n")
    write("refusal_cost", {"machine": machine(), "config": vars(args), "probes_s": raw}, head + table)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probes", type=int, default=20)
    ap.add_argument("--streams", type=int, default=40)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--max-wait", type=float, default=10.0)
    ap.add_argument("--variant", default=SERVED_VARIANT)
    ap.add_argument("--storm", type=int, default=600, help="refusals in the storm")
    ap.add_argument("--at", type=int, default=200, help="the storm's concurrency")
    ap.add_argument("--port", type=int, default=PORT)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
