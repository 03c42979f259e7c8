"""Response-cache benchmark over HTTP: p50/p99 for a miss, an exact hit and a semantic hit, with
10k and 100k entries in the store (filler entries bulk-written into the same partition first).
The app is configs/local.yaml's (what `make serve` runs, its proxy callback included), a
keep-alive client asks: each question once (a miss), then again `--repeats` times (exact hits),
then a paraphrase of each, never asked before (semantic hits). Exact hits are measured twice: as
served (from the near cache once an answer is stored) and from the store itself (the same store
reopened by an app with the near cache off).

    python -m bench.response_cache      # writes bench/results/response_cache.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from core.build.artifacts import LLM_ID  # noqa: E402
from core.cache import CacheConfig, CacheStore, align, guard_check, request_keys  # noqa: E402
from core.embedder import Embedder  # noqa: E402
from serve_app.proxy_refusal import CALLBACK, CALLBACK_ENV  # noqa: E402
from serve_app.schemas import ChatCompletionRequest  # noqa: E402

from .common import machine, markdown_table, write  # noqa: E402

# as `make serve` runs it: the proxy gates generation requests (serve_app/proxy_refusal.py),
# Serve's background loops at the Makefile's intervals
os.environ.setdefault(CALLBACK_ENV, CALLBACK)
os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_SERVE_METRICS_EXPORT_INTERVAL_MS", "1000")

PORT = 8767
PAIRS = Path(__file__).parents[1] / "core" / "cache" / "data" / "semantic_pairs.jsonl"


def body(question: str) -> dict:
    return {"model": LLM_ID, "temperature": 0, "max_tokens": 16,
            "messages": [{"role": "user", "content": question}]}


def keys_for(question: str):
    payload = ChatCompletionRequest(**body(question)).model_dump(exclude_none=True)
    return request_keys(LLM_ID, "chat", payload, "default")  # what the ingress computes


def paraphrase_pairs(n: int) -> list[tuple[str, str]]:
    """Labelled paraphrases that clear the default threshold, the guard and the second stage
    (as the store asks: the new prompt b against the stored a)."""
    emb = Embedder.load(threads=2, token_outputs=True)
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["same"]]
    va, vb = emb.embed([r["a"] for r in rows]), emb.embed([r["b"] for r in rows])
    ta, tb = emb.embed_tokens([r["a"] for r in rows]), emb.embed_tokens([r["b"] for r in rows])
    threshold = CacheConfig(data_dir=Path(".")).threshold + 0.01
    good = [(r["a"], r["b"]) for r, x, y, a, b in zip(rows, va, vb, ta, tb, strict=True)
            if float(x @ y) >= threshold and guard_check(r["b"], r["a"])[0]
            and align.accepts(float(x @ y), True, b, a)]
    return good[:n]


def fill(data_dir: Path, n: int, partition: str) -> float:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    entries = [(f"filler-{i}", vectors[i], f"filler question number {i}",
                {"choices": [{"message": {"content": "filler"}}]}) for i in range(n)]
    start = time.perf_counter()
    # Filling only (no lookups): the second stage's token encoder is not needed here.
    with CacheStore(CacheConfig(data_dir=data_dir, max_entries_per_partition=10**7, rescore=False)) as store:
        asyncio.run(store.put_many(partition, entries, model=LLM_ID))
    return time.perf_counter() - start


def filled(data_dir: Path, n: int, partition: str, stores: Path | None) -> float:
    """Fill data_dir (or copy the store kept in `stores`, filled there the first time); returns
    how long filling took."""
    if stores is None:
        return fill(data_dir, n, partition)
    kept, took = stores / f"store-{n}", stores / f"store-{n}.fill_s"
    if not took.exists():
        shutil.rmtree(kept, ignore_errors=True)
        took.parent.mkdir(parents=True, exist_ok=True)
        took.write_text(str(fill(kept, n, partition)))
    shutil.copytree(kept, data_dir, dirs_exist_ok=True)
    return float(took.read_text())


CLIENT = httpx.Client(timeout=60)  # keep-alive, as OpenAI clients do


def timed(url: str, question: str) -> tuple[float, str]:
    start = time.perf_counter()
    r = CLIENT.post(f"{url}/v1/chat/completions", json=body(question))
    r.raise_for_status()
    return (time.perf_counter() - start) * 1000, r.headers["x-cache"]


def measure(url: str, pairs: list[tuple[str, str]], repeats: int) -> dict:
    miss = [timed(url, a) for a, _ in pairs]
    time.sleep(1.0)  # answers are stored in the background after the response
    exact = [timed(url, a) for _ in range(repeats) for a, _ in pairs]
    semantic = [timed(url, b) for b, in [(b,) for _, b in pairs]]
    return {name: summarise(rows, want) for name, rows, want in (
        ("miss", miss, "miss"), ("exact hit", exact, "hit-exact"),
        ("semantic hit", semantic, "hit-semantic"))}


def summarise(rows: list[tuple[float, str]], want: str) -> dict:
    ms = [m for m, kind in rows if kind == want]
    return {"n": len(ms), "of": len(rows), "p50_ms": round(float(np.percentile(ms, 50)), 1) if ms else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if ms else None}


def app(data_dir: Path, near_cache_entries: int):
    """configs/local.yaml's app on this store (its cache settings kept, but for the bound)."""
    from serve_app.app import build_graph

    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "local.yaml").read_text())
    args = config["applications"][0]["args"]
    args["cache"] = {**args.get("cache", {}), "data_dir": str(data_dir),
                     "max_entries_per_partition": 10**7, "near_cache_entries": near_cache_entries}
    return build_graph(args)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--port", type=int, default=PORT)
    ap.add_argument("--stores", type=Path, default=None,
                    help="keep the filled stores in this folder and reuse them (a copy per run): "
                         "filling 100k entries takes ~2 min")
    args = ap.parse_args()
    import ray
    from ray import serve

    pairs = paraphrase_pairs(args.pairs)
    partition = keys_for(pairs[0][0]).partition
    assert all(keys_for(a).partition == partition for a, _ in pairs)
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    results = []
    for size in args.sizes:
        data_dir = Path(tempfile.mkdtemp(prefix=f"cache-bench-{size}-"))
        fill_s = filled(data_dir, size, partition, args.stores)
        url = f"http://127.0.0.1:{args.port}/cache"
        for near in (4096, 0):  # then the same store again, every exact hit from the store
            serve.run(app(data_dir, near), name="cache", route_prefix="/cache")
            timed(url, "warm-up question about nothing in particular")
            if near:
                results.append({"entries": size, "fill_s": round(fill_s, 1),
                                **measure(url, pairs, args.repeats)})
            else:
                results[-1]["exact hit, near cache off"] = summarise(
                    [timed(url, a) for _ in range(args.repeats) for a, _ in pairs], "hit-exact")
            serve.delete("cache")  # the embedded store: one process at a time
        print(results[-1])
        shutil.rmtree(data_dir, ignore_errors=True)
    serve.shutdown()
    rows = [[r["entries"], kind, f'{r[kind]["n"]}/{r[kind]["of"]}', r[kind]["p50_ms"], r[kind]["p99_ms"]]
            for r in results for kind in ("miss", "exact hit", "exact hit, near cache off", "semantic hit")]
    table = markdown_table(["entries in store", "request", "served as", "p50 (ms)", "p99 (ms)"], rows)
    write("response_cache", {"machine": machine(), "results": results}, table)


if __name__ == "__main__":
    main()
