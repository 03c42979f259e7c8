"""Serving benchmark over HTTP (loopback only, bounded request counts), all in one run:

  chat: aggregate generated tok/s, TTFT and latency p50/p99 with 1, 4 and 16 concurrent streams for
    (a) this app (continuous batching), (b) the same app serving one request at a time
    (engine max_running=1: the naive deployment), (c) llama-cpp-python's OpenAI server on the same
    GGUF (the outside peer; `bash bench/setup_peer.sh` once, skipped if absent);
  embeddings: @serve.batch on (max_batch_size 32) vs off (1) at 32 concurrent clients.

    python -m bench.serving     # writes bench/results/serving.{json,md} and serving.png
"""

from __future__ import annotations

import argparse
import asyncio
import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from core.build.artifacts import SERVED_VARIANT  # noqa: E402

from .common import RESULTS  # noqa: E402
from .loadgen import LoadResult, run_chat_load, run_embedding_load, write_results  # noqa: E402

CHAT, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"
PORT = 8766
QUESTIONS = [
    "What is the capital of France?", "Name three primary colours.", "Write a haiku about the sea.",
    "Explain gravity in one sentence.", "Give me a tip for learning to cook.", "What is a prime number?",
    "Describe a cat to a child.", "Why is the sky blue?", "Suggest a name for a bakery.",
    "What does a compiler do?", "How do plants make food?", "Tell me a fun fact about octopuses.",
    "What is the boiling point of water?", "List two benefits of exercise.", "What is an API?",
    "How many days are in a leap year?",
]
PLAN = {1: 8, 4: 16, 16: 64}  # concurrency -> requests (4 per stream at 16: past the ramp-up)


def app_args(max_running: int, variant: str = SERVED_VARIANT) -> dict:
    return {"device": "cpu", "llm_variant": variant, "llm_spinning": False,
            "engine": {"max_running": max_running, "max_waiting": 64},
            "cache": {"enabled": False}}  # the response cache would turn repeats into hits


async def chat_sweep(url: str, label: str, max_tokens: int) -> list[LoadResult]:
    out = []
    for conc, n in PLAN.items():
        res = await run_chat_load(url, CHAT, QUESTIONS, conc, max_tokens, n, label=label)
        print(label, conc, res.summary().get("gen_tok_s"))
        out.append(res)
    return out


def run_app(name: str, args: dict, embedder_options: dict | None = None) -> str:
    from ray import serve

    from serve_app.app import build_graph

    serve.run(build_graph(args, embedder_options=embedder_options), name=name, route_prefix=f"/{name}")
    return f"http://127.0.0.1:{PORT}/{name}"


def plot(results: list[LoadResult], variant: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r.label for r in results if r.kind == "chat"):
        rows = [r for r in results if r.label == label]
        ax.plot([r.concurrency for r in rows], [r.summary()["gen_tok_s"] for r in rows], marker="o",
                label=label)
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("generated tok/s (all streams)")
    ax.set_xscale("log", base=2)
    ax.set_title(f"SmolLM2-135M {variant} (peer: GGUF Q4_1), 2 cores", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "serving.png", dpi=120)


async def main_async(args: argparse.Namespace) -> None:
    import ray
    from ray import serve

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    results: list[LoadResult] = []
    for name, max_running in (("continuous", 16), ("naive", 1)):
        url = run_app(name, app_args(max_running, args.variant))
        results += await chat_sweep(url, f"this app ({name})" if name == "continuous"
                                    else "naive (one at a time)", args.max_tokens)
        serve.delete(name)
    if not args.skip_peer:
        from .peer_llamacpp import llamacpp_server, peer_installed

        if peer_installed():
            with llamacpp_server(port=8091, n_threads=2) as url:
                results += await chat_sweep(url, "llama-cpp-python server", args.max_tokens)
        else:
            print("llama-cpp-python peer not installed (bench/setup_peer.sh without SERVER_ONLY): skipped")
    texts = [f"{q} (variant {i})" for i in range(4) for q in QUESTIONS]
    for label, batch in (("embeddings batched (32)", 32), ("embeddings unbatched", 1)):
        url = run_app("emb", app_args(16), {"user_config": {"max_batch_size": batch,
                                                            "batch_wait_timeout_s": 0.002}})
        results.append(await run_embedding_load(url, EMBED, texts, 32, 512, label=label))
        serve.delete("emb")
    serve.shutdown()
    write_results(args.out, results, {"max_tokens": args.max_tokens, "plan": PLAN, "variant": args.variant})
    if args.out == "serving":
        plot(results, args.variant)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--variant", default=SERVED_VARIANT, help="LM variant for this app and the naive one")
    ap.add_argument("--out", default="serving", help="results name (bench/results/<out>.{json,md})")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
