"""Quality gate alone: each LM variant's task accuracy vs fp32, paired (no timing, so valid on a busy
machine).

    python -m bench.quality_gate --variants fp32,q4,q4-acc0,w8-rtn32,w8-fa,w8-fa16,w8-kv8
    # writes bench/results/quality_gate.{json,md}

The optimizer (`make optimize`) computes the same rows with its timings and picks by them.
"""

from __future__ import annotations

import argparse
import time

from core.build.artifacts import SERVED_VARIANT, build_llm
from core.quant.evaluate import evaluate_tasks
from core.quant.report import PAIRED_NOTE, paired_table

from .common import machine, write


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=",".join(dict.fromkeys(
        ["fp32", "q4", "q4-acc0", "w8-rtn32", "w8-fa", SERVED_VARIANT, "w8-kv8"])))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    start = time.perf_counter()
    rows = evaluate_tasks(build_llm(), args.variants.split(","), args.threads)
    m = machine()
    served = next((r for r in rows if r["name"] == SERVED_VARIANT), None)
    worse = served and ("significantly worse" if served["significantly_worse"] else "not significantly worse")
    verdict = "" if served is None else (
        f"Served default ({SERVED_VARIANT}): **{worse}** than fp32 on this set "
        f"(diff {served['acc_diff']:+.3f}, "
        f"95% CI {served['acc_diff_ci']}, p = {served['mcnemar_p']:.3g}).\n\n")
    text = (f"# Quality gate: task accuracy vs fp32 on {rows[0]['questions']} unselected questions\n\n"
            f"{m['date']}, onnxruntime {m['onnxruntime']}, {(time.perf_counter() - start) / 60:.1f} min.\n\n"
            + verdict + paired_table(rows) + "\n" + PAIRED_NOTE + "\n")
    write("quality_gate", {"machine": m, "variants": rows}, text)


if __name__ == "__main__":
    main()
