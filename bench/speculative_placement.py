"""Where the draft model runs (issue 7, item 4), measured over HTTP through Ray Serve, batch 1:

  alone       the fp32 target, no speculation
  replica     the q4 build drafting inside the target's replica (no hop per step; the default)
  deployment  the q4 build drafting from its own DraftDeployment (one Serve call per step)

All three apps run side by side; each prompt goes to each app in rotated, alternating (ABBA)
order, so drifting load from other processes lands on all of them alike.

    python -m bench.speculative_placement   # writes bench/results/speculative_placement.{json,md}
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import httpx  # noqa: E402

from .common import machine, markdown_table, wait_until_ok, write  # noqa: E402
from .speculative import messages  # noqa: E402

PORT = 8771
CHAT_MODEL = "smollm2-135m-instruct"
PLACEMENTS = ("alone", "replica", "deployment")
SMALL = {"ray_actor_options": {"num_cpus": 0.5}}  # three apps on one machine: only one busy at a time


def app_args(placement: str) -> dict:
    engine: dict = {"max_running": 4, "max_seq_len": 2048, "prefix_cache_mb": 0}
    if placement != "alone":
        engine |= {"speculative": "model", "draft_variant": "q4", "draft_placement": placement}
    return {"device": "cpu", "llm_variant": "fp32", "llm_spinning": False, "cache": {"enabled": False},
            "engine": engine}


def ask(client: httpx.Client, app: str, message: str, max_tokens: int) -> tuple[str, int, float]:
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": message}],
            "max_tokens": max_tokens, "temperature": 0}
    start = time.perf_counter()
    r = client.post(f"http://127.0.0.1:{PORT}/{app}/v1/chat/completions", json=body)
    seconds = time.perf_counter() - start
    r.raise_for_status()
    out = r.json()
    return out["choices"][0]["message"]["content"], out["usage"]["completion_tokens"], seconds


def hop_cost(handle, calls: int = 40) -> dict:
    """Round trip of a one-token draft call to the DraftDeployment vs the draft model's own time."""
    ctx = list(range(100, 160))
    handle.propose.remote("hop", ctx, 1, None, None).result()
    trips, inner = [], []
    for _ in range(calls):
        ctx.append(5)
        start = time.perf_counter()
        drafts = handle.propose.remote("hop", ctx, 1, None, None).result()
        trips.append(time.perf_counter() - start)
        inner.append(drafts.draft_s)
    handle.release.remote("hop").result()
    rt, model = statistics.median(trips) * 1000, statistics.median(inner) * 1000
    return {"round_trip_ms": round(rt, 2), "draft_model_ms": round(model, 2), "hop_ms": round(rt - model, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chat", type=int, default=8)
    ap.add_argument("--rewrite", type=int, default=6)
    ap.add_argument("--chat-tokens", type=int, default=80)
    ap.add_argument("--rewrite-tokens", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import ray
    from ray import serve

    from serve_app.app import build_graph

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    for p in PLACEMENTS:
        serve.run(build_graph(app_args(p), llm_options=SMALL, embedder_options=SMALL, draft_options=SMALL),
                  name=p, route_prefix=f"/{p}")
        wait_until_ok(f"http://127.0.0.1:{PORT}/{p}/healthz", 120)
    load_start = list(os.getloadavg())
    loads = {"chat": (messages("chat", args.chat), args.chat_tokens),
             "rewrite": (messages("rewrite", args.rewrite), args.rewrite_tokens)}
    # tally[load][placement] = [tokens, seconds, per-prompt tok/s...]; texts for the exactness check
    tally = {load: {p: {"tokens": 0, "seconds": 0.0, "per_prompt": {}} for p in PLACEMENTS} for load in loads}
    mismatches = 0
    with httpx.Client(timeout=300) as client:
        for p in PLACEMENTS:  # warm-up: sessions, allocators, cost models
            ask(client, p, messages("rewrite", 1)[0], 32)
        for load, (msgs, max_tokens) in loads.items():
            for rep in range(args.repeats):
                for i, msg in enumerate(msgs):
                    order = PLACEMENTS[i % 3:] + PLACEMENTS[:i % 3]
                    texts = {}
                    for p in (order if rep % 2 == 0 else order[::-1]):
                        text, tokens, seconds = ask(client, p, msg, max_tokens)
                        texts[p] = text
                        t = tally[load][p]
                        t["tokens"] += tokens
                        t["seconds"] += seconds
                        t["per_prompt"].setdefault(i, []).append(tokens / seconds)
                    mismatches += len(set(texts.values())) > 1
                    print(f"{load} pass {rep + 1} prompt {i + 1}/{len(msgs)}", flush=True)
    hop = hop_cost(serve.get_deployment_handle("DraftDeployment", app_name="deployment"))
    spec = {p: serve.get_deployment_handle("LLMDeployment", app_name=p).stats.remote().result()["speculative"]
            for p in PLACEMENTS if p != "alone"}
    serve.shutdown()

    rows, results = [], []
    for load, per in tally.items():
        base = per["alone"]
        for p, t in per.items():
            tok_s = t["tokens"] / t["seconds"]
            ratios = [statistics.mean(t["per_prompt"][i]) / statistics.mean(base["per_prompt"][i])
                      for i in t["per_prompt"]]
            result = {"workload": load, "placement": p, "tokens": t["tokens"],
                      "seconds": round(t["seconds"], 2), "tok_s": round(tok_s, 1),
                      "speedup": round(tok_s / (base["tokens"] / base["seconds"]), 3),
                      "median_prompt_speedup": round(statistics.median(ratios), 3)}
            results.append(result)
            rows.append([load, p, t["tokens"], result["tok_s"], f"{result['speedup']:.2f}x",
                         f"{result['median_prompt_speedup']:.2f}x"])
    per_step = {p: {"acceptance_rate": s["acceptance_rate"],
                    "mean_accepted_length": s["mean_accepted_length"],
                    "tokens_per_step": s["tokens_per_step"],
                    "draft_ms_per_drafting_step": round(1000 * s["draft_s"] / max(s["drafts"], 1), 2),
                    "verify_ms_per_step": round(1000 * s["verify_s"] / max(s["steps"], 1), 2)}
                for p, s in spec.items()}
    best = {load: max((r for r in results if r["workload"] == load), key=lambda r: r["tok_s"])["placement"]
            for load in loads}
    payload = {"results": results, "per_step": per_step, "best": best, "hop": hop,
               "greedy_identical_prompts": sum(len(msgs) for msgs, _ in loads.values()) * args.repeats
               - mismatches, "greedy_mismatches": mismatches, "machine": machine(),
               "settings": vars(args) | {"loadavg_start": load_start, "loadavg_end": list(os.getloadavg())}}
    steps = "; ".join(f"{p}: drafting {v['draft_ms_per_drafting_step']} ms per step, verify "
                      f"{v['verify_ms_per_step']} ms, acceptance {v['acceptance_rate']}, "
                      f"{v['tokens_per_step']} tokens per target forward" for p, v in per_step.items())
    table = "\n".join([
        "# Speculative decoding: where the draft runs (issue 7)", "",
        "fp32 target, q4 build as draft, batch 1, greedy, over HTTP through Ray Serve; the three apps "
        f"side by side, {args.repeats} passes in ABBA order. `python -m bench.speculative_placement`.", "",
        markdown_table(["workload", "placement", "tokens", "tok/s", "speedup", "median per-prompt speedup"],
                       rows),
        f"Per step: {steps}. One draft call to the DraftDeployment (1 token, steady state): "
        f"{hop['round_trip_ms']} ms round trip, of which the draft model {hop['draft_model_ms']} ms: "
        f"the hop costs {hop['hop_ms']} ms per speculative step. Outputs identical across the three apps on "
        f"{payload['greedy_identical_prompts']} of {payload['greedy_identical_prompts'] + mismatches} "
        f"prompt runs. Load average at start {[round(x, 1) for x in load_start]}, at end "
        f"{[round(x, 1) for x in payload['settings']['loadavg_end']]}.", ""])
    write("speculative_placement", payload, table)


if __name__ == "__main__":
    main()
