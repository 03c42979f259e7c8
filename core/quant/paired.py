"""Paired comparison of a variant with fp32 on the same questions (each answered right or wrong by both).

b = questions fp32 answers right and the variant wrong, c = the reverse. The exact McNemar test is a
two-sided binomial test of b against b + c at p = 1/2 (only the discordant pairs carry information).
The accuracy difference (variant - fp32) gets a percentile bootstrap 95% interval over questions.

Rule: a variant is SIGNIFICANTLY WORSE than fp32 when McNemar's p < 0.05 and b > c (fp32 ahead).
"""

from __future__ import annotations

from math import comb

import numpy as np

ALPHA = 0.05


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact p-value: twice the smaller binomial tail of Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_diff_ci(ref: np.ndarray, var: np.ndarray, level: float = 0.95, n_boot: int = 10_000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile interval of mean(var) - mean(ref), resampling questions (pairs) with replacement."""
    diff = np.asarray(var, float) - np.asarray(ref, float)
    idx = np.random.default_rng(seed).integers(0, len(diff), (n_boot, len(diff)))
    means = diff[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_vs_fp32(ref: list[bool], var: list[bool]) -> dict:
    """The row fields the chooser and the report read."""
    r, v = np.asarray(ref, bool), np.asarray(var, bool)
    b, c = int((r & ~v).sum()), int((~r & v).sum())
    p = mcnemar_exact(b, c)
    lo, hi = bootstrap_diff_ci(r, v)
    return {"acc_diff": round(float(v.mean() - r.mean()), 4), "acc_diff_ci": [round(lo, 4), round(hi, 4)],
            "discordant": [b, c], "mcnemar_p": round(p, 4),
            "significantly_worse": bool(p < ALPHA and b > c)}
