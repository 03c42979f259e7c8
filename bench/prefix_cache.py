"""Prefix (KV) cache benchmark over HTTP, response cache bypassed (`Cache-Control: no-store`):

1. TTFT of a request whose ~1k-token system prompt is cold vs warm (another question, same prefix);
2. a 5-turn chat: prefill tokens and total latency with the prefix cache on vs off;
3. hit rate with 2 LLM replicas, with and without cache-aware routing.

    python -m bench.prefix_cache      # writes bench/results/prefix_cache.{json,md}
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from .common import machine, markdown_table, write  # noqa: E402

PORT = 8768
CHAT = "smollm2-135m-instruct"
NO_STORE = {"Cache-Control": "no-store"}
POLICY = ("You are the support assistant of Northwind Outfitters, a company that sells hiking and "
          "camping equipment. Follow these rules: greet politely, answer in at most three sentences, "
          "never invent order numbers, refer billing questions to billing@northwind.example, and "
          "mention the 30-day return policy when a customer asks about returns. ")


def system_prompt(tag: str, repeats: int = 15) -> str:
    return f"[{tag}] " + POLICY * repeats  # ~1k tokens


def stream_ttft(url: str, messages: list[dict], max_tokens: int = 8) -> tuple[float, float, dict, str]:
    body = {"model": CHAT, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    start, ttft, usage, text = time.perf_counter(), None, {}, []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=NO_STORE, timeout=120) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                if choice["delta"].get("content"):
                    ttft = ttft or time.perf_counter() - start
                    text.append(choice["delta"]["content"])
    return ttft * 1000, (time.perf_counter() - start) * 1000, usage, "".join(text)


def deploy(name: str, args: dict, llm_options: dict | None = None) -> str:
    from ray import serve

    from serve_app.app import build_graph

    base = {"device": "cpu", "llm_variant": "q4", "cache": {"enabled": False}}
    serve.run(build_graph(base | args, llm_options), name=name, route_prefix=f"/{name}")
    return f"http://127.0.0.1:{PORT}/{name}"


def ttft_cold_warm(url: str, n: int = 3) -> dict:
    cold, warm, prompt_tokens = [], [], []
    for k in range(n):
        system = system_prompt(f"tenant {k}")
        c, _, usage, _ = stream_ttft(url, [{"role": "system", "content": system},
                                           {"role": "user", "content": "Where is my order?"}])
        w, _, wusage, _ = stream_ttft(url, [{"role": "system", "content": system},
                                            {"role": "user", "content": "Can I return boots?"}])
        cold.append(c)
        warm.append(w)
        prompt_tokens.append((usage["prompt_tokens"], wusage["prompt_tokens_details"]["cached_tokens"]))
    return {"cold_ttft_ms": round(float(np.median(cold)), 1),
            "warm_ttft_ms": round(float(np.median(warm)), 1),
            "speedup": round(float(np.median(cold) / np.median(warm)), 1),
            "prompt_tokens": prompt_tokens[0][0], "warm_cached_tokens": prompt_tokens[0][1]}


def five_turns(url: str) -> dict:
    messages = [{"role": "system", "content": system_prompt("chat")}]
    prefilled, total_ms = [], 0.0
    for question in ["Hi, I need new hiking boots.", "Which size should I pick?", "Are they waterproof?",
                     "How long is shipping?", "Can I return them if they do not fit?"]:
        messages.append({"role": "user", "content": question})
        _, ms, usage, text = stream_ttft(url, messages, max_tokens=24)
        total_ms += ms
        prefilled.append(usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"])
        messages.append({"role": "assistant", "content": text})
    return {"prefilled_tokens_per_turn": prefilled, "prefilled_total": sum(prefilled),
            "total_latency_ms": round(total_ms, 1)}


def routing_hit_rate(url: str, tenants: int = 4, rounds: int = 4) -> dict:
    cached = prompt = 0
    for r in range(rounds):
        for k in range(tenants):
            body = {"model": CHAT, "max_tokens": 2, "temperature": 0,
                    "messages": [{"role": "system", "content": system_prompt(f"routing {k}", 3)},
                                 {"role": "user", "content": f"Question {r}"}]}
            usage = httpx.post(f"{url}/v1/chat/completions", json=body, headers=NO_STORE,
                               timeout=120).json()["usage"]
            if r:  # the first round is cold everywhere
                cached += usage["prompt_tokens_details"]["cached_tokens"]
                prompt += usage["prompt_tokens"]
    return {"hit_rate": round(cached / prompt, 3)}


def main() -> None:
    import ray
    from ray import serve

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    out: dict = {"machine": machine()}
    url = deploy("on", {})
    out["ttft"] = ttft_cold_warm(url)
    out["chat_on"] = five_turns(url)
    serve.delete("on")
    url = deploy("off", {"engine": {"prefix_cache_mb": 0}})
    out["chat_off"] = five_turns(url)
    serve.delete("off")
    two = {"llm_threads": 1, "llm_spinning": False}
    for routed in (True, False):
        url = deploy("two", two | {"prefix_routing": routed},
                     {"num_replicas": 2, "ray_actor_options": {"num_cpus": 1}})
        out[f"routing_{'on' if routed else 'off'}"] = routing_hit_rate(url)
        serve.delete("two")
    serve.shutdown()
    t, on, off = out["ttft"], out["chat_on"], out["chat_off"]
    table = markdown_table(["measure", "prefix cache off / cold", "prefix cache on / warm", "ratio"], [
        [f"TTFT, {t['prompt_tokens']}-token prompt sharing a ~1k-token prefix (ms)", t["cold_ttft_ms"],
         t["warm_ttft_ms"], f"{t['speedup']}x"],
        ["5-turn chat: tokens prefilled", off["prefilled_total"], on["prefilled_total"],
         f"{off['prefilled_total'] / max(on['prefilled_total'], 1):.1f}x"],
        ["5-turn chat: total latency (ms)", off["total_latency_ms"], on["total_latency_ms"],
         f"{off['total_latency_ms'] / on['total_latency_ms']:.1f}x"],
        ["2 replicas: prefix hit rate, random vs cache-aware routing", out["routing_off"]["hit_rate"],
         out["routing_on"]["hit_rate"], ""],
    ])
    table += f"\nPrefilled tokens per turn with the cache on: {on['prefilled_tokens_per_turn']} " \
             f"(off: {off['prefilled_tokens_per_turn']}).\n"
    write("prefix_cache", out, table)


if __name__ == "__main__":
    main()
