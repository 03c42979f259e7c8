"""Evaluate semantic-cache matching on the shipped labelled pairs.

Embeds both prompts of every pair with the real MiniLM embedder, takes the
cosine, and reports per threshold (0.80 ... 0.99) how a cache would behave
with and without the guard (core/cache/guard.py):

- recall: share of paraphrase pairs that would hit;
- false-hit rate: share of near-miss pairs that would hit (a wrong answer);
- precision: of all pairs that would hit, the share that should.

Two sets: semantic_pairs.jsonl, which the guard was developed against, and
semantic_pairs_holdout.jsonl, written afterwards and never used to tune it.
The recommended threshold has the highest guarded recall among those with a
false-hit rate <= 1 % and recall >= 50 % on the main set (also MARGIN below
the threshold) and on the held-out set. Writes bench/results/cache_eval.json
and bench/results/cache_eval.md.

    python bench/cache_eval.py [--pairs FILE] [--holdout FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from core.cache import guard  # noqa: E402

PAIRS = ROOT / "core" / "cache" / "data" / "semantic_pairs.jsonl"
HOLDOUT = ROOT / "core" / "cache" / "data" / "semantic_pairs_holdout.jsonl"
THRESHOLDS = [round(0.80 + 0.01 * i, 2) for i in range(20)]
MAX_FALSE_HIT_RATE = 0.01
MIN_RECALL = 0.50
# On the main set the rule must also hold this far below the threshold: one
# borderline pair moves the false-hit rate by ~0.5 %, and another build of
# the embedder (fp16, quantised) moves cosines by ~0.01.
MARGIN = 0.02


def load_pairs(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        assert {"a", "b", "same", "kind"} <= row.keys(), row
    return rows


class Evaluation:
    """Cosines and guard verdicts of one pair set, scored per threshold."""

    def __init__(self, path: Path, embedder) -> None:
        self.path = path
        self.rows = load_pairs(path)
        self.same = np.array([r["same"] for r in self.rows])
        texts = sorted({r["a"] for r in self.rows} | {r["b"] for r in self.rows})
        vectors = embedder.embed(texts)
        index = {t: i for i, t in enumerate(texts)}
        a = vectors[[index[r["a"]] for r in self.rows]]
        b = vectors[[index[r["b"]] for r in self.rows]]
        self.cos = np.sum(a * b, axis=1)  # unit vectors: the dot product is the cosine
        self.verdicts, self.guard_us = _guard_verdicts(self.rows)
        self.guard_ok = np.array([ok for ok, _ in self.verdicts])
        self.table = [
            {
                "threshold": t,
                "no_guard": self.score(self.cos >= t),
                "guard": self.score((self.cos >= t) & self.guard_ok),
            }
            for t in THRESHOLDS
        ]

    def score(self, hit: np.ndarray) -> dict:
        tp, fp = int(np.sum(hit & self.same)), int(np.sum(hit & ~self.same))
        return {
            "hits": tp + fp,
            "true_hits": tp,
            "false_hits": fp,
            "recall": tp / int(self.same.sum()),
            "false_hit_rate": fp / int((~self.same).sum()),
            "precision": tp / (tp + fp) if tp + fp else 1.0,
        }

    def hits(self, threshold: float) -> np.ndarray:
        return (self.cos >= threshold) & self.guard_ok

    def row(self, threshold: float) -> dict:
        return next(r for r in self.table if r["threshold"] == threshold)

    def false_hits(self, threshold: float) -> list[dict]:
        return [
            {"a": r["a"], "b": r["b"], "kind": r["kind"], "cosine": round(float(c), 4)}
            for r, c, h in zip(self.rows, self.cos, self.hits(threshold), strict=True)
            if h and not r["same"]
        ]

    def rejected_paraphrases(self) -> list[dict]:
        return [
            {"a": r["a"], "b": r["b"], "kind": r["kind"], "cosine": round(float(c), 4), "reason": why}
            for r, c, (ok, why) in zip(self.rows, self.cos, self.verdicts, strict=True)
            if r["same"] and not ok
        ]

    def by_kind(self, threshold: float) -> dict[str, dict]:
        kinds: dict[str, dict] = defaultdict(lambda: {"same": None, "pairs": 0, "hits": 0})
        for r, h in zip(self.rows, self.hits(threshold), strict=True):
            k = kinds[r["kind"]]
            k["same"], k["pairs"], k["hits"] = r["same"], k["pairs"] + 1, k["hits"] + int(h)
        return dict(sorted(kinds.items(), key=lambda kv: (not kv[1]["same"], kv[0])))

    def summary(self) -> dict:
        return {
            "pairs_file": _relative(self.path),
            "pairs": len(self.rows),
            "paraphrases": int(self.same.sum()),
            "near_misses": int((~self.same).sum()),
        }


def _guard_verdicts(rows: list[dict]) -> tuple[list[tuple[bool, str]], float]:
    """Guard verdicts and the mean time per pair with no cached features."""
    verdicts = []
    start = time.perf_counter()
    for r in rows:
        guard.features.cache_clear()
        verdicts.append(guard.check(r["a"], r["b"]))
    return verdicts, (time.perf_counter() - start) / len(rows) * 1e6


def meets(row: dict, key: str = "guard") -> bool:
    return row[key]["false_hit_rate"] <= MAX_FALSE_HIT_RATE and row[key]["recall"] >= MIN_RECALL


def recommend(main: Evaluation, holdout: Evaluation | None, key: str = "guard", margin: float = MARGIN):
    """Highest main-set recall among thresholds that meet the rule everywhere asked."""

    def ok(t: float) -> bool:
        window = [r for r in main.table if t - margin - 1e-9 <= r["threshold"] <= t]
        return all(meets(r, key) for r in window) and (holdout is None or meets(holdout.row(t), key))

    candidates = [r for r in main.table if ok(r["threshold"])]
    if not candidates:
        return None
    # highest recall; among equals the higher threshold (more margin)
    return max(candidates, key=lambda r: (r[key]["recall"], r["threshold"]))["threshold"]


def _relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def _pct(score: dict) -> str:
    fhr = f"{score['false_hit_rate']:.1%} ({score['false_hits']})"
    return f"{score['recall']:.1%} | {fhr} | {score['precision']:.1%}"


def markdown(report: dict, main: Evaluation, holdout: Evaluation | None) -> str:
    rec = report["recommended_threshold"]
    lines = [
        "# Semantic cache evaluation",
        "",
        f"Embedder: {report['embedder']}. Guard: {report['guard_us_per_pair']:.0f} µs per pair with no"
        " cached features (in the cache the stored prompt's features are cached).",
        "",
        f"- main set `{report['main']['pairs_file']}`: {report['main']['pairs']} pairs"
        f" ({report['main']['paraphrases']} paraphrases, {report['main']['near_misses']} near misses);"
        " the guard was developed against it.",
    ]
    if holdout is not None:
        h = report["holdout"]
        lines.append(
            f"- held-out set `{h['pairs_file']}`: {h['pairs']} pairs ({h['paraphrases']} paraphrases,"
            f" {h['near_misses']} near misses), written after the guard and never used to tune it."
        )
    lines += [
        "",
        f"Rule: highest recall with false-hit rate <= {MAX_FALSE_HIT_RATE:.0%} of near misses and recall >="
        f" {MIN_RECALL:.0%}, on the main set (also {MARGIN} below the threshold) and on the held-out set."
        f" **Recommended threshold: {rec}**. Main set alone: {report['main_only_threshold']}"
        f" (no margin: {report['main_only_strict_threshold']}). Without the guard: "
        f"{report['recommended_without_guard'] or 'no threshold qualifies'}.",
        "",
        "| threshold | recall | false-hit rate | precision | held-out recall | held-out false-hit rate"
        " | held-out precision | recall (no guard) | false-hit rate (no guard) | precision (no guard) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in main.table:
        t = row["threshold"]
        mark = " **←**" if t == rec else ""
        held = _pct(holdout.row(t)["guard"]) if holdout is not None else "- | - | -"
        lines.append(f"| {t:.2f}{mark} | {_pct(row['guard'])} | {held} | {_pct(row['no_guard'])} |")
    if rec is None:
        return "\n".join(lines) + "\n"
    lines += ["", f"## By kind at {rec}, main set, with guard", "", "| kind | label | pairs | hits |"]
    lines.append("|---|---|---:|---:|")
    for kind, k in report["by_kind"].items():
        lines.append(
            f"| {kind} | {'paraphrase' if k['same'] else 'near miss'} | {k['pairs']} | {k['hits']} |"
        )
    for title, hits in (
        ("main set", report["false_hits"]),
        ("held-out set", report.get("holdout_false_hits")),
    ):
        if hits is None:
            continue
        lines += ["", f"False hits at {rec}, {title}:", ""]
        lines += [f"- {fh['cosine']:.3f} [{fh['kind']}] {fh['a']!r} ~ {fh['b']!r}" for fh in hits] or [
            "- none"
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, default=PAIRS)
    parser.add_argument("--holdout", type=Path, default=HOLDOUT, help="a missing file skips it")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()

    from core.embedder import Embedder

    embedder = Embedder.load(threads=args.threads)
    main_set = Evaluation(args.pairs, embedder)
    holdout = Evaluation(args.holdout, embedder) if args.holdout.is_file() else None
    rec = recommend(main_set, holdout)
    report: dict = {
        "embedder": "all-MiniLM-L6-v2 (core.embedder, ONNX Runtime)",
        "machine": machine(),
        "guard_us_per_pair": main_set.guard_us,
        "rule": {"max_false_hit_rate": MAX_FALSE_HIT_RATE, "min_recall": MIN_RECALL, "margin": MARGIN},
        "recommended_threshold": rec,
        "main_only_threshold": recommend(main_set, None),
        "main_only_strict_threshold": recommend(main_set, None, margin=0.0),
        "recommended_without_guard": recommend(main_set, holdout, key="no_guard"),
        "main": main_set.summary(),
        "table": main_set.table,
        "guard_rejected_paraphrases": main_set.rejected_paraphrases(),
    }
    if rec is not None:
        report["by_kind"] = main_set.by_kind(rec)
        report["false_hits"] = main_set.false_hits(rec)
    if holdout is not None:
        report["holdout"] = {**holdout.summary(), "table": holdout.table}
        report["holdout"]["guard_rejected_paraphrases"] = holdout.rejected_paraphrases()
        if rec is not None:
            report["holdout_false_hits"] = holdout.false_hits(rec)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(report, main_set, holdout)
    (args.out / "cache_eval.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "cache_eval.md").write_text(text)
    print(text)
    print(f"recommended threshold: {rec}")


if __name__ == "__main__":
    main()
