"""This app against llama.cpp's own server on the same GGUF, side by side in one interleaved run.

    SERVER_ONLY=1 bash bench/setup_peer.sh   # once: .venv-peer/bin/llama-server
    python -m bench.peer                      # bench/results/peer.{json,md,png}

Servers (all up for the whole run, each measured in turn, round-robin so each sees the same noise):
  this app        configs/local.yaml started by `make serve`, exactly as the README starts it;
  naive           the same graph with engine.max_running 1 (one request at a time), second app;
  llama-server    llama.cpp's server, -t 2, --parallel 16 and --parallel 32 (continuous batching),
                  and --parallel 16 with its n-gram speculation (--spec-type ngram-simple) at 1 and 4
                  streams; chat template from the GGUF, context big enough for every slot.
                  Each level compares against the fastest llama-server configuration there.
Load: closed loop at 1/4/16/32/64 streams, distinct 128-token prompts (`Cache-Control: no-store`),
128 new tokens with EOS ignored, streamed. Batch 1 also times the engine alone (no Ray, no HTTP).
While a peer is measured this app sits idle; its processes' CPU over those turns is recorded
(`idle_app_cpu_pct`), since Ray's background work is a cost the peer pays in this comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import psutil
import yaml

from .common import RESULTS, markdown_table, wait_until_ok, write
from .loadgen import LoadResult, run_chat_load
from .peer_llamacpp import ROOT, gguf_path, port_free, stop

MODEL = "smollm2-135m-instruct"
LLAMA_SERVER = ROOT / ".venv-peer" / "bin" / "llama-server"
APP_PORT, NAIVE_ROUTE = 8000, "/naive"
PROMPT_TOKENS, NEW_TOKENS = 128, 128
# streams -> measured requests per server per round (past the ramp at 16+; bounded run time)
PLAN = {1: 4, 4: 8, 16: 32, 32: 48, 64: 64}
ALL = tuple(PLAN)
# label -> (llama-server --parallel, extra flags, levels measured): slots beyond 16 matter only
# with more than 16 streams; speculation only where a step has few rows to verify.
PEERS = {"llama-server --parallel 16": (16, [], ALL),
         "llama-server --parallel 32": (32, [], (16, 32, 64)),
         "llama-server --parallel 16, ngram spec": (16, ["--spec-type", "ngram-simple"], (1, 4))}
NAIVE_LEVELS = (1, 4, 16)  # one at a time at 64 streams would take ~10 min a round to say the same
WORDS = ("river mountain garden window planet music letter engine forest silver harbor candle market "
         "winter thunder paper bridge castle orange doctor island rocket violin desert falcon puzzle "
         "lantern meadow copper signal blanket canyon").split()


def served_args() -> dict:
    """The `args:` of configs/local.yaml's app: what `make serve` serves."""
    return yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())["applications"][0]["args"]


# -- prompts --------------------------------------------------------------------------------------
def make_prompts(n: int, target_tokens: int, seed: int = 0) -> list[str]:
    """n distinct user messages whose chat-templated prompt is `target_tokens` long here."""
    from core.build.artifacts import build_llm
    from core.llm.chat_tokenizer import ChatTokenizer

    chat = ChatTokenizer(build_llm(progress=lambda _: None))
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        words = [f"Request {i}: write a long story that uses these words:"]
        while True:
            text = " ".join(words)
            length = len(chat.encode(chat.chat_prompt([{"role": "user", "content": text}])))
            if length >= target_tokens:
                break
            words.append(str(rng.choice(WORDS)))
        prompts.append(text)
    return prompts


# -- servers --------------------------------------------------------------------------------------
def app_config(path: Path) -> None:
    """configs/local.yaml as served, plus the naive app (one request at a time) beside it."""
    cfg = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    naive = yaml.safe_load(yaml.safe_dump(cfg["applications"][0]))
    naive.update(name="naive", route_prefix=NAIVE_ROUTE)
    naive["args"] = {**naive["args"], "engine": {**naive["args"].get("engine", {}), "max_running": 1},
                     "cache": {"enabled": False}}
    naive["deployments"] = [d for d in naive["deployments"] if d["name"] != "CacheDeployment"]
    for d in naive["deployments"]:  # the served app reserves all 2 logical CPUs; share them
        d["ray_actor_options"] = {"num_cpus": 0}
    cfg["applications"].append(naive)
    path.write_text(yaml.safe_dump(cfg))


@contextmanager
def process(cmd: list[str], log: Path, ready_url: str, timeout_s: float = 300,
            env: dict | None = None) -> Iterator[subprocess.Popen]:
    port = int(ready_url.split(":")[2].split("/")[0])
    for _ in range(60):  # a benchmark run just before may still be shutting its Ray down
        if port_free(port):
            break
        time.sleep(1)
    else:
        raise RuntimeError(f"{ready_url}: port already in use")
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=ROOT, env={**os.environ, **(env or {})})
    try:
        def alive() -> None:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: see {log}")
        wait_until_ok(ready_url, timeout_s, alive)
        yield proc
    finally:
        stop(proc, grace_s=30)


def llama_server_cmd(port: int, parallel: int, extra: list[str]) -> list[str]:
    # The context is split evenly between the slots (kv_unified off by default here).
    ctx = parallel * 512  # per slot: the 128-token prompt, 128 new tokens, room to spare
    return [str(LLAMA_SERVER), "-m", str(gguf_path()), "--host", "127.0.0.1", "--port", str(port),
            "-t", "2", "-tb", "2", "--parallel", str(parallel), "-c", str(ctx), "--jinja",
            "--alias", MODEL, "--no-webui", *extra]


def tree_cpu_seconds(proc: subprocess.Popen) -> float:
    """CPU seconds used so far by a process and all its descendants (Ray's raylet, workers, ...)."""
    total = 0.0
    try:
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


# -- measurement ----------------------------------------------------------------------------------
async def measure(url: str, label: str, streams: int, prompts: list[str]) -> LoadResult:
    return await run_chat_load(url, MODEL, prompts, streams, NEW_TOKENS, len(prompts),
                               headers={"Cache-Control": "no-store"}, timeout_s=600,
                               deadline_s=900, warmup=0, label=label,
                               extra_body={"ignore_eos": True}, retry_refused=True)


def engine_alone_b1(prompt: str, repeats: int = 3) -> dict:
    """The served variant's engine, in this process: batch-1 decode tok/s and TTFT, no Ray/HTTP."""
    from core.build.artifacts import SERVED_VARIANT
    from core.llm.engine import EngineConfig, LLMEngine
    from core.llm.sampling import SamplingParams
    from core.llm.textgen import TextGenerator
    from deployments.models import built_variant_dir

    local = served_args()
    variant = local.get("llm_variant", SERVED_VARIANT)
    gen = TextGenerator(built_variant_dir(variant), variant=variant,
                        spinning=local.get("llm_spinning", False))
    # The served engine settings (speculation included), one slot, no prefix reuse across repeats.
    engine = LLMEngine(gen.runner, gen.chat, EngineConfig(**{
        **local.get("engine", {}), "max_running": 1, "prefix_cache_bytes": 0, "max_seq_len": 1024}))
    ids = gen.chat.encode(gen.chat.chat_prompt([{"role": "user", "content": prompt}]))
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    ttfts, tpots = [], []
    for _ in range(repeats):
        seq = engine.add(ids, params, lambda out: None)
        while not seq.finished:
            engine.step()
        ttfts.append(seq.first_token_at - seq.arrival)
        tpots.append((seq.last_token_at - seq.first_token_at) / (len(seq.output_ids) - 1))
    return {"label": "this app: engine alone (no HTTP)", "ttft_ms": round(1000 * np.median(ttfts), 1),
            "decode_tok_s": round(1 / np.median(tpots), 1)}


def summarize(results: list[LoadResult]) -> dict:
    """Rounds of one server at one level -> medians of the per-round figures."""
    rows = [r.summary() for r in results]

    def med(key: str) -> float | None:
        vals = [row[key] for row in rows if row.get(key) is not None]
        return round(float(np.median(vals)), 1) if vals else None

    tpot = med("tpot_p50_ms")
    return {"label": rows[0]["label"], "streams": rows[0]["concurrency"],
            "ok": sum(r["requests_ok"] for r in rows), "failed": sum(r["requests_failed"] for r in rows),
            "refusals": sum(rec.refusals for r in results for rec in r.records),
            "rounds": [row["gen_tok_s"] for row in rows], "gen_tok_s": med("gen_tok_s"),
            "decode_tok_s_per_stream": round(1000 / tpot, 1) if tpot else None,
            "ttft_p50_ms": med("ttft_p50_ms"), "ttft_p99_ms": med("ttft_p99_ms"),
            "itl_p50_ms": med("itl_p50_ms"), "itl_p99_ms": med("itl_p99_ms"),
            "errors": {k: v for row in rows for k, v in row["errors"].items()}}


def table(rows: list[dict], engine: dict, ratios: dict) -> str:
    out = markdown_table(
        ["server", "streams", "ok/failed", "503s retried", "gen tok/s (median)", "per round",
         "decode tok/s per stream", "TTFT p50 (ms)", "TTFT p99 (ms)", "ITL p50 (ms)", "ITL p99 (ms)"],
        [[r["label"], r["streams"], f'{r["ok"]}/{r["failed"]}', r.get("refusals", 0), r["gen_tok_s"],
          " / ".join(str(x) for x in r["rounds"]), r["decode_tok_s_per_stream"], r["ttft_p50_ms"],
          r["ttft_p99_ms"], r["itl_p50_ms"], r["itl_p99_ms"]] for r in rows])
    out += ("\nok/failed: requests answered / not answered. 503s retried: this app (and the naive "
            "one) refuse a request whose expected wait for its first token exceeds "
            "engine.max_queue_wait_s (10 s) with 503 + Retry-After; the client comes back after "
            "Retry-After, as OpenAI's client does, and TTFT counts from its first try. llama-server "
            "queues every request (see its TTFT). gen tok/s counts the tokens of answered requests "
            "over the whole run.\n")
    out += (f"\nEngine alone (served variant, batch 1, in-process): {engine['decode_tok_s']} tok/s "
            f"decode, TTFT {engine['ttft_ms']} ms for a {PROMPT_TOKENS}-token prompt.\n\n")
    out += markdown_table(["streams", "fastest llama-server", "this app / it: aggregate tok/s",
                           "TTFT p99: this app / it", "decode tok/s per stream: this app / fastest"],
                          [[k, v["peer"], v["tok_s_ratio"], v["ttft_p99_ratio"], v["decode_ratio"]]
                           for k, v in ratios.items()])
    return out


def best_peer_ratios(rows: list[dict]) -> dict:
    """Per level: this app against the faster of the llama-server configurations."""
    out = {}
    for streams in sorted({r["streams"] for r in rows}):
        ours = next((r for r in rows if r["streams"] == streams and r["label"] == "this app"), None)
        peers = [r for r in rows if r["streams"] == streams and r["label"].startswith("llama-server")]
        if not ours or not peers or not ours["gen_tok_s"]:
            continue
        best = max(peers, key=lambda r: r["gen_tok_s"] or 0)
        fastest_decode = max(peers, key=lambda r: r["decode_tok_s_per_stream"] or 0)
        out[streams] = {"peer": best["label"], "tok_s_ratio": round(ours["gen_tok_s"] / best["gen_tok_s"], 2),
                        "decode_ratio": round(ours["decode_tok_s_per_stream"]
                                              / fastest_decode["decode_tok_s_per_stream"], 2)
                        if ours["decode_tok_s_per_stream"] and fastest_decode["decode_tok_s_per_stream"]
                        else None,
                        "ttft_p99_ratio": round(ours["ttft_p99_ms"] / best["ttft_p99_ms"], 2)
                        if ours["ttft_p99_ms"] and best["ttft_p99_ms"] else None}
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label]
        x = [r["streams"] for r in mine]
        ax1.plot(x, [r["gen_tok_s"] for r in mine], marker="o", label=label)
        ax2.plot(x, [r["ttft_p99_ms"] for r in mine], marker="o", label=label)
    for ax, title in ((ax1, "generated tok/s, all streams"), (ax2, "TTFT p99 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_title(title, fontsize=10)
    ax2.set_yscale("log")
    ax1.legend(fontsize=8)
    fig.suptitle(f"SmolLM2-135M, same GGUF, 2 cores, {PROMPT_TOKENS}-token prompts, "
                 f"{NEW_TOKENS} new tokens", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


async def run(args: argparse.Namespace) -> None:
    levels = [s for s in args.streams if s in PLAN]
    with ExitStack() as stack:
        cfg = Path(tempfile.mkdtemp()) / "peer_apps.yaml"
        app_config(cfg)
        app = stack.enter_context(process(["make", "-s", "serve", f"SERVE_CONFIG={cfg}"],
                                          RESULTS / "peer_app.log", f"http://127.0.0.1:{APP_PORT}/healthz"))
        servers = {"this app": f"http://127.0.0.1:{APP_PORT}"}
        if not args.skip_naive:
            servers["naive (one at a time)"] = f"http://127.0.0.1:{APP_PORT}{NAIVE_ROUTE}"
        levels_of = {"naive (one at a time)": NAIVE_LEVELS}
        for i, (label, (parallel, extra, peer_levels)) in enumerate(PEERS.items()):
            if (args.skip_spec_peer and extra) or not set(peer_levels) & set(levels):
                continue
            port = 8091 + i
            stack.enter_context(process(llama_server_cmd(port, parallel, extra),
                                        RESULTS / f"peer_llama_server_{i}.log",
                                        f"http://127.0.0.1:{port}/health"))
            servers[label] = f"http://127.0.0.1:{port}"
            levels_of[label] = peer_levels
        # Warm every server (first-request costs), then measure.
        warm = make_prompts(2, PROMPT_TOKENS, seed=99)
        for label, url in servers.items():
            await measure(url, label, 1, warm)
        engine = engine_alone_b1(warm[0])
        print(engine, flush=True)
        results: dict[tuple[str, int], list[LoadResult]] = {}
        idle_cpu: list[float] = []
        for streams in levels:
            order = [s for s in servers if streams in levels_of.get(s, ALL)]
            for rnd in range(args.rounds):
                # the same prompts for every server in a round; new ones (no cache hits) per round
                prompts = make_prompts(PLAN[streams], PROMPT_TOKENS, seed=1000 * streams + rnd)
                for label in order if rnd % 2 == 0 else order[::-1]:  # ABBA...: drift cancels
                    cpu0, t0 = tree_cpu_seconds(app), time.perf_counter()
                    res = await measure(servers[label], label, streams, prompts)
                    if label.startswith("llama-server"):
                        idle_cpu.append(100 * (tree_cpu_seconds(app) - cpu0) / (time.perf_counter() - t0))
                    results.setdefault((label, streams), []).append(res)
                    print(label, streams, rnd, res.summary()["gen_tok_s"], flush=True)
    rows = [summarize(v) for v in results.values()]
    rows.sort(key=lambda r: (list(servers).index(r["label"]), r["streams"]))
    ratios = best_peer_ratios(rows)
    payload = {"meta": {"prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, "plan": PLAN,
                        "rounds": args.rounds, "llama_server_threads": 2,
                        "idle_app_cpu_pct": round(float(np.median(idle_cpu)), 1) if idle_cpu else None,
                        "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
               "engine_alone_b1": engine, "rows": rows, "ratios_vs_best_llama_server": ratios}
    md = table(rows, engine, ratios)
    md += (f"\nWhile llama-server was measured, this app's idle processes used "
           f"{payload['meta']['idle_app_cpu_pct']}% of one core (Ray's background work).\n")
    write(args.out, payload, md)
    plot(rows, RESULTS / f"{args.out}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=list(PLAN))
    ap.add_argument("--skip-spec-peer", action="store_true", help="no llama-server with ngram spec")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--out", default="peer")
    args = ap.parse_args()
    if not LLAMA_SERVER.exists():
        raise SystemExit(f"{LLAMA_SERVER} missing: run bash bench/setup_peer.sh first")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
