"""Where a refusal's time goes while the engine decodes a full batch (issue 15, "cheap refusals").

Background: key A keeps enough long streams in flight to fill every slot and the waiting queue,
so both cores decode. Probes, one at a time, from the same machine:
  healthz   GET /healthz: proxy + ingress, no work (the floor of any answer);
  refusal   a chat request that is refused (503), with the ingress' early refusal on: decided
            before tokenization, the cache or a hop;
  refusal (engine)  the same with early refusal off: tokenization + template, a hop to the LLM
            replica (its event loop busy streaming), @serve.batch, the engine's check;
  load hop  the LLM replica's load() through a handle from this driver: one hop's cost.

    python -m bench.refusal_cost [--probes 20]     # writes bench/results/refusal_cost.{json,md}

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

import httpx  # noqa: E402

from core.build.artifacts import SERVED_VARIANT  # noqa: E402

from .common import machine, markdown_table, write  # noqa: E402

CHAT = "smollm2-135m-instruct"
PORT = 8768
KEYS = {"sk-a": "a"}
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


async def main_async(args: argparse.Namespace) -> None:
    import ray
    from ray import serve

    from serve_app.app import build_graph

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    rows, raw = [], {}
    for early in (True, False):
        name = "refusal-early" if early else "refusal-engine"
        args_ = {"device": "cpu", "llm_variant": args.variant, "llm_spinning": False,
                 "engine": {"max_running": args.slots, "max_waiting": 64, "max_queue_wait_s": args.max_wait},
                 "cache": {"enabled": False}, "api_keys": KEYS, "early_refusal": early}
        serve.run(build_graph(args_, llm_options={"max_ongoing_requests": 80}), name=name,
                  route_prefix=f"/{name}")
        llm = serve.get_deployment_handle("LLMDeployment", app_name=name)
        got = await probe(f"http://127.0.0.1:{PORT}/{name}", llm, args.probes, args.streams)
        serve.delete(name)
        raw[name] = got
        label = "early refusal on" if early else "early refusal off (engine decides)"
        for what, values in got.items():
            if values:
                rows.append([label, what, len(values), f"{statistics.median(values) * 1000:.1f}",
                             f"{max(values) * 1000:.1f}"])
    serve.shutdown()
    table = markdown_table(["app", "probe", "n", "median ms", "max ms"], rows)
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
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
