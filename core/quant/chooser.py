"""The optimizer's decision, as pure functions over measured rows (one dict per variant).

Rule: among variants for this device that meet the quality budget (perplexity ratio vs fp32, not
significantly worse than fp32 on the task set by the paired test of core/quant/paired.py, and optional
floors on task accuracy and top-1 agreement) and the latency target, serve the fastest.
Timings on a shared 2-core machine jitter by a few percent, so variants within `tie_tolerance` of
the fastest count as tied and the tie goes to the better perplexity ratio.
If none meets both, say so, name the one that comes closest (smallest relative excess over the two
limits), and serve the fastest variant that still meets the quality budget: quality is the floor
that a production pick never gives up, and the fp32 baseline always meets it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LATENCY_METRICS = {"decode": "decode_ms_per_token", "prefill": "prefill_ms_128"}


@dataclass(frozen=True)
class Budget:
    target_latency_ms: float
    max_ppl_increase: float  # a fraction: 0.02 is 2%
    latency_metric: str = "decode_ms_per_token"
    min_task_accuracy: float | None = None
    min_top1: float | None = None
    tie_tolerance: float = 0.03


@dataclass
class Choice:
    pick: str | None  # what to serve
    meets_both: bool
    closest: str | None  # only when nothing meets both
    verdicts: dict[str, str] = field(default_factory=dict)  # per variant: "ok" or why not
    message: str = ""


def parse_fraction(text: str) -> float:
    """'2%' -> 0.02, '0.02' -> 0.02."""
    text = text.strip()
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 <= value < 10:
        raise ValueError(f"not a plausible fraction: {text!r}")
    return value


def quality_failures(row: dict, budget: Budget) -> list[str]:
    out = []
    limit = 1 + budget.max_ppl_increase
    if row["ppl_ratio"] > limit:
        out.append(f"ppl x{row['ppl_ratio']:.3f} > x{limit:.3f}")
    if row.get("significantly_worse"):
        lo, hi = row["acc_diff_ci"]
        out.append(f"significantly worse than fp32 on tasks: {row['acc_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                   f"b/c {row['discordant'][0]}/{row['discordant'][1]}, p {row['mcnemar_p']:.3g}")
    if budget.min_task_accuracy is not None and row["task_accuracy"] < budget.min_task_accuracy:
        out.append(f"task accuracy {row['task_accuracy']:.2f} < {budget.min_task_accuracy:.2f}")
    if budget.min_top1 is not None and row["top1_agreement"] < budget.min_top1:
        out.append(f"top-1 agreement {row['top1_agreement']:.3f} < {budget.min_top1:.3f}")
    return out


def latency(row: dict, budget: Budget) -> float:
    return float(row[budget.latency_metric])


def excess(row: dict, budget: Budget) -> float:
    """How far a variant is from meeting both limits, as summed relative excesses (0: meets)."""
    total = max(0.0, latency(row, budget) / budget.target_latency_ms - 1)
    total += max(0.0, row["ppl_ratio"] / (1 + budget.max_ppl_increase) - 1)
    for key, floor in (("task_accuracy", budget.min_task_accuracy), ("top1_agreement", budget.min_top1)):
        if floor:
            total += max(0.0, 1 - row[key] / floor)
    return total


def _fastest(rows: list[dict], budget: Budget) -> dict:
    best = min(latency(r, budget) for r in rows)
    tied = [r for r in rows if latency(r, budget) <= best * (1 + budget.tie_tolerance)]
    return min(tied, key=lambda r: (r["ppl_ratio"], latency(r, budget)))


def choose(rows: list[dict], budget: Budget, device: str = "cpu") -> Choice:
    verdicts, eligible = {}, []
    for row in rows:
        if row.get("device", "any") not in ("any", device):
            verdicts[row["name"]] = f"{row['device']} variant, not a {device} pick"
            continue
        eligible.append(row)
        why = quality_failures(row, budget)
        if latency(row, budget) > budget.target_latency_ms:
            why.append(f"{latency(row, budget):.1f} ms > {budget.target_latency_ms:g} ms")
        verdicts[row["name"]] = "; ".join(why) or "ok"
    passing = [r for r in eligible if verdicts[r["name"]] == "ok"]
    if passing:
        best = _fastest(passing, budget)
        msg = f"{best['name']} is the fastest variant within the quality budget and the latency target"
        quickest = min(passing, key=lambda r: latency(r, budget))
        if quickest is not best:
            gap = latency(best, budget) / latency(quickest, budget) - 1
            msg += (f" ({quickest['name']} measured {gap:.1%} faster, inside the "
                    f"{budget.tie_tolerance:.0%} noise band, where the better perplexity ratio wins: "
                    f"x{best['ppl_ratio']:.4f} vs x{quickest['ppl_ratio']:.4f})")
        return Choice(best["name"], True, None, verdicts, msg)
    if not eligible:
        return Choice(None, False, None, verdicts, f"no variant measured for {device}")
    closest = min(eligible, key=lambda r: excess(r, budget))["name"]
    safe = [r for r in eligible if not quality_failures(r, budget)]
    pick = _fastest(safe, budget)["name"] if safe else None
    msg = (f"NO variant meets both the latency target and the quality budget; closest: {closest} "
           f"({verdicts[closest]}). ")
    msg += (f"Serving {pick}, the fastest within the quality budget." if pick else
            "No variant meets the quality budget either: nothing to serve.")
    return Choice(pick, False, closest, verdicts, msg)
