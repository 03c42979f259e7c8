"""What the ORT run of a step is made of: kernel time by operator, for w8-rtn32 (ONNX Runtime's
GroupQueryAttention and MatMulNBits), the same weights on the project's attention kernel with a
float32 (w8-fa) and a float16 KV cache (w8-fa16), on the project's attention and int8 matmul
(w8-own, served) and with ONNX Runtime's int8 KV cache (w8-kv8).

    python -m bench.op_split        # bench/results/op_split.{json,md}

The profile (bench/profile.py) shows the ORT run is ~98% of an engine step at 16 streams; this
splits that run by operator type with ONNX Runtime's own profiler, at the shapes the peer
benchmark's load reaches: 1 and 16 rows decoding one token each after 128 and 256 tokens of
context (its prompts are 128 tokens and it generates 128), and a 128-token prefill. Step times
are medians of unprofiled runs; the shares come from a separate profiled run of the same steps.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .common import markdown_table, write
from .peer import served_args

SHAPES = [("decode", 1, 128), ("decode", 16, 128), ("decode", 1, 256), ("decode", 16, 256),
          ("prefill 128", 1, 0)]
GROUPS = {"GroupQueryAttention": "attention", "Attention": "attention", "AttentionHalfKV": "attention",
          "MatMulNBits": "int8/4-bit matmuls", "MatMulW8": "int8/4-bit matmuls",
          "MatMul": "float matmuls", "Gemm": "float matmuls"}


def op_times(profile: Path) -> Counter:
    """Kernel microseconds per operator type in an ONNX Runtime profile."""
    times: Counter = Counter()
    for event in json.loads(profile.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[GROUPS.get(event["args"]["op_name"], "other ops")] += event["dur"]
    return times


def timed_step(runner, slots, rows: int, width: int, context: int) -> float:
    """One forward of `rows` rows, each `width` new tokens after `context` cached ones."""
    slots.lens[:rows] = context
    start = time.perf_counter()
    runner.forward_slots(slots, 0, rows, np.full((rows, width), 42), np.full(rows, width),
                         np.full((rows, 1), width - 1))
    return time.perf_counter() - start


def measure(variants: list[str], repeats: int, rounds: int = 3) -> list[dict]:
    """Per shape and variant: median step ms over `rounds` interleaved rounds, and the share of
    kernel time by operator type (a separate profiled session)."""
    from core.llm.session import make_session
    from core.llm.textgen import TextGenerator
    from core.quant.variants import ensure_variant
    from deployments.models import built_variant_dir

    paths = {v: str(ensure_variant(built_variant_dir(v), v, progress=False)) for v in variants}
    plain = {v: TextGenerator(Path(p).parent, variant=v, threads=2).runner for v, p in paths.items()}
    out = []
    for kind, rows, context in SHAPES:
        shape = (rows, 128 if kind.startswith("prefill") else 1, context)
        slots = {v: r.make_slots(rows, 512) for v, r in plain.items()}
        seconds: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(rounds):  # interleaved: both variants see the same noise
            for v, runner in plain.items():
                [timed_step(runner, slots[v], *shape) for _ in range(2)]
                seconds[v] += [timed_step(runner, slots[v], *shape) for _ in range(repeats)]
        for v, path in paths.items():
            profiled = TextGenerator(Path(path).parent, variant=v, threads=2).runner
            prefix = os.path.join(tempfile.mkdtemp(), "ort")
            profiled.session = make_session(path, threads=2, profile_prefix=prefix)
            profiled_slots = profiled.make_slots(rows, 512)
            [timed_step(profiled, profiled_slots, *shape) for _ in range(3 + repeats)]
            times = op_times(Path(profiled.session.end_profiling()))
            total = sum(times.values())
            out.append({"variant": v, "step": kind, "rows": rows, "context": context,
                        "step_ms": round(1000 * float(np.median(seconds[v])), 2),
                        "share": {k: round(t / total, 3) for k, t in times.most_common()}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(dict.fromkeys(
        ["w8-rtn32", "w8-fa", "w8-fa16", served_args()["llm_variant"], "w8-kv8"])),
                    help="comma-separated; the first is the baseline of the ratio column")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    variants = args.variants.split(",")
    result = measure(variants, args.repeats)
    base = {(r["step"], r["rows"], r["context"]): r["step_ms"] for r in result if r["variant"] == variants[0]}
    groups = ["attention", "int8/4-bit matmuls", "float matmuls", "other ops"]
    table = markdown_table(
        ["variant", "step", "rows", "context (tokens)", "step ms (median)", f"vs {variants[0]}"] + groups,
        [[r["variant"], r["step"], r["rows"], r["context"], r["step_ms"],
          f"{r['step_ms'] / base[(r['step'], r['rows'], r['context'])]:.2f}x"]
         + [f"{100 * r['share'].get(g, 0):.0f}%" for g in groups] for r in result])
    table += ("\n2 threads (w8-own: the kernels' 2, ONNX Runtime's 1); step ms: medians over 3 "
              "interleaved rounds; shares: kernel time by operator type from ONNX Runtime's profiler "
              "(attention = GroupQueryAttention or the project's "
              "Attention / AttentionHalfKV: rotary, KV append, QK', softmax, PV; int8 matmuls = "
              "MatMulNBits or the project's MatMulW8).\n")
    write("op_split", {"variants": variants, "steps": result}, table)
    print(table)


if __name__ == "__main__":
    main()
