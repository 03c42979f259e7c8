"""`python -m core.optimize --target-latency-ms 30 --max-ppl-increase 2%`: measure first, then choose.

Benchmarks the fp32 baseline and every candidate variant side by side (building missing ones),
prints the paired comparison with fp32 on the hand-written task set, picks the fastest within the
quality budget (core/quant/chooser.py: perplexity, and never a variant significantly worse than fp32
by that paired test), and writes the Serve config (configs/optimized.yaml, from configs/local.yaml),
bench/results/optimizer.{md,json} and a PNG of latency vs quality.
Exit status 0; with --strict, 3 when no variant meets both limits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .quant.chooser import LATENCY_METRICS, Budget, choose, parse_fraction
from .quant.report import REPO, paired_table, plot, report, write_config
from .quant.variants import variant_names
from .timing import machine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m core.optimize", description=__doc__.split("\n")[0])
    ap.add_argument("--target-latency-ms", type=float, required=True,
                    help="latency limit in ms (see --latency-metric)")
    ap.add_argument("--max-ppl-increase", type=parse_fraction, required=True,
                    help="perplexity budget vs fp32, e.g. 2%% or 0.02")
    ap.add_argument("--latency-metric", choices=list(LATENCY_METRICS), default="decode",
                    help="decode: ms per token at batch 1 (default); prefill: ms for 128 tokens")
    ap.add_argument("--min-task-accuracy", type=float, default=None, help="optional floor, 0..1")
    ap.add_argument("--min-top1", type=float, default=None, help="optional floor on top-1 agreement")
    ap.add_argument("--candidates", default=",".join(variant_names()),
                    help="comma-separated variants (fp32 is always measured)")
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="which variants may be picked")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spinning", action="store_true", help="ORT thread spinning while measuring")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base-config", type=Path, default=REPO / "configs" / "local.yaml")
    ap.add_argument("--config-out", type=Path, default=REPO / "configs" / "optimized.yaml")
    ap.add_argument("--report-dir", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--no-rss", action="store_true", help="skip the per-variant peak-RSS processes")
    ap.add_argument("--strict", action="store_true", help="exit 3 when no variant meets both limits")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from .build.artifacts import build_llm
    from .quant.evaluate import evaluate_lm

    args = parse_args(argv)
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    budget = Budget(args.target_latency_ms, args.max_ppl_increase, LATENCY_METRICS[args.latency_metric],
                    args.min_task_accuracy, args.min_top1)
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    rows = evaluate_lm(build_llm(), names, args.threads, args.spinning, args.repeats, rss=not args.no_rss)
    choice = choose(rows, budget, args.device)
    print("Task accuracy vs fp32, paired (a significantly worse variant is never picked):")
    print(paired_table(rows))
    print(choice.message)
    if choice.pick is None:
        return 3
    pick_row = next(r for r in rows if r["name"] == choice.pick)
    write_config(choice.pick, budget, pick_row, args.base_config, args.config_out)
    args.report_dir.mkdir(parents=True, exist_ok=True)
    plots = plot(rows, budget, choice, args.report_dir)
    text = report(rows, budget, choice, machine(), args.config_out, plots, time.perf_counter() - start,
                  load_before)
    (args.report_dir / "optimizer.md").write_text(text)
    (args.report_dir / "optimizer.json").write_text(json.dumps(
        {"machine": machine(), "budget": vars(budget), "choice": vars(choice), "variants": rows}, indent=1))
    print(text)
    return 3 if args.strict and not choice.meets_both else 0


if __name__ == "__main__":
    sys.exit(main())
