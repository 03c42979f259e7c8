"""Engine benchmark: prefill ms (128 tokens) and decode tok/s at batch 1, per LM variant, side
by side in one run, plus the embedder's throughput.

    python -m bench.engine            # writes bench/results/engine.{json,md}
"""

from __future__ import annotations

import argparse

import numpy as np

from core.build.artifacts import LLM_VARIANTS, SERVED_VARIANT, build_embedder, build_llm
from core.embedder import Embedder
from core.llm.generate import decode_one_token, prefill
from core.llm.textgen import TextGenerator
from core.quant.variants import ensure_variant

from .common import machine, markdown_table, median_time, write


def bench_variant(model_dir, variant: str, threads: int, spinning: bool, prompt_len: int,
                  decode_steps: int, repeats: int) -> dict:
    gen = TextGenerator(model_dir, variant=variant, threads=threads, spinning=spinning)
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, 40000, prompt_len).tolist()
    prefill_s = median_time(lambda: prefill(gen.runner, prompt), repeats)

    def decode() -> None:
        _, kv = prefill(gen.runner, prompt[:16])
        for _ in range(decode_steps):
            _, kv = decode_one_token(gen.runner, 42, kv)

    decode_s = median_time(decode, repeats)
    short_prefill = median_time(lambda: prefill(gen.runner, prompt[:16]), repeats)
    per_token = (decode_s - short_prefill) / decode_steps
    size = (model_dir / f"{variant}.onnx").stat().st_size
    return {"variant": variant, "threads": threads, "spinning": spinning,
            "prefill_ms_128": round(prefill_s * 1000, 1), "decode_tok_s_b1": round(1 / per_token, 1),
            "bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--decode-steps", type=int, default=64)
    args = ap.parse_args()
    model_dir = build_llm()
    variants = list(dict.fromkeys([*LLM_VARIANTS, SERVED_VARIANT]))  # the base builds and what is served
    ensure_variant(model_dir, SERVED_VARIANT)
    rows = []
    for spinning in (False, True):
        for variant in variants:
            rows.append(bench_variant(model_dir, variant, args.threads, spinning, 128,
                                      args.decode_steps, args.repeats))
    base = {r["spinning"]: r for r in rows if r["variant"] == "fp32"}
    for r in rows:
        r["decode_speedup_vs_fp32"] = round(r["decode_tok_s_b1"] / base[r["spinning"]]["decode_tok_s_b1"], 2)

    emb = Embedder(build_embedder(), threads=args.threads)
    texts = [f"sentence number {i} about embeddings and vector search" for i in range(256)]
    one = median_time(lambda: emb.embed(texts[:1]), 20)
    batch = median_time(lambda: emb.embed(texts[:64]), args.repeats)
    embed = {"texts_per_s_batch1": round(1 / one, 1), "texts_per_s_batch64": round(64 / batch, 1)}

    table = markdown_table(
        ["variant", "ORT spinning", "bytes (MB)", "prefill 128 tok (ms)", "decode b=1 (tok/s)",
         "decode vs fp32"],
        [[r["variant"], "on" if r["spinning"] else "off", round(r["bytes"] / 1e6),
          r["prefill_ms_128"], r["decode_tok_s_b1"], f'{r["decode_speedup_vs_fp32"]}x'] for r in rows])
    table += (f"\nEmbedder (all-MiniLM-L6-v2, fp32): {embed['texts_per_s_batch1']} texts/s one at a "
              f"time, {embed['texts_per_s_batch64']} texts/s in batches of 64.\n")
    write("engine", {"machine": machine(), "llm": rows, "embedder": embed}, table)


if __name__ == "__main__":
    main()
