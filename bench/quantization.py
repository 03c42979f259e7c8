"""Quantization benchmark: every LM variant against fp32, side by side in one run (speed, cost,
quality), plus the embedder's int8/fp16 variants.

    python -m bench.quantization      # writes bench/results/quantization.{json,md}
                                      # and bench/results/quantization_embedder.json

quantization.json is a list, one object per LM variant, with at least name, bits, bytes,
decode_tok_s_b1 and ppl_ratio (vs this run's fp32): the contract for outside checks.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from core.build.artifacts import build_embedder, build_llm
from core.quant.embedder_quant import evaluate_embedder
from core.quant.evaluate import evaluate_lm
from core.quant.quantizer import available_algorithms
from core.quant.report import PAIRED_NOTE, paired_table, table
from core.quant.variants import variant_names

from .common import RESULTS, machine, markdown_table, write


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spinning", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default=",".join(variant_names()))
    args = ap.parse_args()
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    rows = evaluate_lm(build_llm(), args.variants.split(","), args.threads, args.spinning, args.repeats)
    emb = evaluate_embedder(build_embedder(), args.threads, args.repeats)
    m = machine()
    unavailable = {k: v for k, v in available_algorithms().items() if v != "ok"}
    text = (f"# Quantization: every variant vs fp32, one run\n\n{m['cpu']}, {m['cores']} cores, "
            f"onnxruntime {m['onnxruntime']}, {m['date']}; threads {args.threads}, spinning "
            f"{'on' if args.spinning else 'off'}; {(time.perf_counter() - start) / 60:.1f} min; 1-min load "
            f"average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (the machine "
            "is shared: compare ratios within this table, not with other runs). Timings interleaved "
            "round by round; decode: median step of the best round; prefill: best round.\n\n"
            "## SmolLM2-135M-Instruct\n\n" + table(rows) + "\n"
            + "".join(f"- {r['name']}: speed-up {r['decode_speedup_vs_fp32']}x (decode b=1), prefill "
                      f"{r['prefill_ratio_vs_fp32']}x fp32's time\n" for r in rows)
            + "".join(f"- {k.upper()}: not run, {v}\n" for k, v in unavailable.items())
            + "\n### Task accuracy vs fp32, paired\n\n" + paired_table(rows) + "\n" + PAIRED_NOTE + "\n"
            + "\n## all-MiniLM-L6-v2 (48 sentences of core/quant/data/sentences.txt)\n\n"
            + markdown_table(
                ["variant", "MB", "texts/s one at a time", "texts/s batch of 48", "cosine to fp32 mean",
                 "min", "nearest neighbour unchanged", "top-5 overlap"],
                [[r["name"], round(r["bytes"] / 1e6), r["texts_per_s_b1"], r["texts_per_s_batch"],
                  r["cosine_mean"], r["cosine_min"], r["nn1_same"], r["top5_overlap"]] for r in emb]))
    write("quantization", rows, text)
    (RESULTS / "quantization_embedder.json").write_text(json.dumps({"machine": m, "variants": emb}, indent=1))


if __name__ == "__main__":
    main()
