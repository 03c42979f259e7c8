"""Evaluate semantic-cache matching on labelled prompt pairs, split by topic.

Each pair is two prompts: a paraphrase (same answer: the cache should hit) or
a near miss (different answer: a hit would serve a wrong answer). See
core/cache/data/README.md for how the pairs were made.

Splits, all by topic (no topic in two splits):
- tune / dev / test1: core/cache/data/pairs/, topics cut by a hash of their
  name. Round 1 chose on tune+dev and scored test1 once (ROUND1 below: the
  target was missed); round 2 read test1's errors to improve the guard, so
  test1 is development data now.
- test: core/cache/data/pairs_test/, written after round 1 and before any
  round-2 change, never read pair by pair; scored once at the chosen setting.

For every decision rule (cosine alone, cosine + guard) and threshold the pooled
development pairs give recall and the false-hit rate with its exact one-sided
Clopper-Pearson upper bound. The chosen setting has the highest development
recall whose false-hit upper bound is <= MAX_FALSE_HIT_UB. The served defaults
(core/cache/config.py) must equal the choice (tests/cache/test_cache_eval.py).
Writes bench/results/cache_eval.{json,md}.

    python bench/cache_eval.py [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from core.cache import guard  # noqa: E402

PAIRS_DIR = ROOT / "core" / "cache" / "data" / "pairs"
TEST_DIR = ROOT / "core" / "cache" / "data" / "pairs_test"
# The earlier sets (the guard was first written against the first): scored at the chosen
# setting for comparison, never used to choose; their topics overlap every split.
LEGACY = [ROOT / "core" / "cache" / "data" / "semantic_pairs.jsonl",
          ROOT / "core" / "cache" / "data" / "semantic_pairs_holdout.jsonl"]
SPLITS = ("tune", "dev", "test1", "test")
DEVELOPMENT = ("tune", "dev", "test1")  # the choice is made on these, pooled
# Shares of core/cache/data/pairs (test1 has half: with ~560 near misses one false hit
# still bounds the rate under 1 %); the test split is core/cache/data/pairs_test.
SPLIT_SHARES = {"tune": 0.30, "dev": 0.20, "test1": 0.50}
# Round 1 (guard of commit 2633429): chosen on tune+dev, cosine >= 0.90 + guard; test1
# scored once. Kept as it was measured.
ROUND1 = {"threshold": 0.90, "tune+dev": {"recall": 0.603, "false_hits": 1, "near_misses": 575, "ub": 0.0082},
          "test1": {"recall": 0.598, "false_hits": 6, "near_misses": 564, "ub": 0.0209}}
CONFIDENCE = 0.95
MAX_FALSE_HIT_UB = 0.01
TARGET_RECALL = 0.60
THRESHOLDS = [round(0.70 + 0.01 * i, 2) for i in range(30)]


@dataclass(frozen=True, slots=True)
class Pair:
    topic: str
    same: bool  # a paraphrase: the cache should answer b with a's answer
    kind: str
    a: str
    b: str


def load_pairs(directory: Path = PAIRS_DIR) -> list[Pair]:
    """Parse the hand-written pair files: '## topic' headers, then '= kind | a | b' (paraphrase)
    or '! kind | a | b' (near miss) lines."""
    pairs: list[Pair] = []
    for path in sorted(directory.glob("*.txt")):
        topic = None
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("# "):
                continue
            if line.startswith("## "):
                topic = line[3:].strip()
                continue
            fields = [f.strip() for f in line[1:].split(" | ")]
            if line[0] not in "=!" or len(fields) != 3 or topic is None or fields[1] == fields[2]:
                raise ValueError(f"{path.name}:{n}: not '= kind | a | b' under a topic: {line!r}")
            pairs.append(Pair(topic, line[0] == "=", *fields))
    return pairs


def load_legacy(path: Path) -> list[Pair]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Pair(path.stem, r["same"], r["kind"], r["a"], r["b"]) for r in rows]


def assign_splits(pairs: list[Pair], test: list[Pair] = ()) -> dict[str, str]:
    """topic -> split. Development topics in a fixed pseudo-random order (sha256 of the name),
    cut by share of pairs: the assignment depends on the topic names and sizes only, never on
    scores. Every topic of ``test`` goes to the test split."""
    sizes = Counter(p.topic for p in pairs)
    order = sorted(sizes, key=lambda t: hashlib.sha256(t.encode()).hexdigest())
    total, done, out = sum(sizes.values()), 0, {}
    bounds = np.cumsum([SPLIT_SHARES[s] for s in DEVELOPMENT])
    for topic in order:
        share = (done + sizes[topic] / 2) / total  # the topic goes where its middle falls
        out[topic] = DEVELOPMENT[int(np.searchsorted(bounds, share, side="right"))]
        done += sizes[topic]
    for p in test:
        if out.get(p.topic, "test") != "test":
            raise ValueError(f"topic {p.topic!r} is in a development split and in the test set")
        out[p.topic] = "test"
    return out


def clopper_pearson_upper(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """Exact one-sided upper confidence bound on a binomial rate after k events in n trials:
    the p at which P(X <= k | n, p) = 1 - confidence."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    alpha = 1.0 - confidence

    def cdf(p: float) -> float:
        if p <= 0.0:
            return 1.0
        if p >= 1.0:
            return 0.0
        lp, lq = math.log(p), math.log1p(-p)
        return sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                            + i * lp + (n - i) * lq) for i in range(k + 1))

    lo, hi = k / n, 1.0
    for _ in range(100):  # the cdf falls as p grows: bisect on cdf(p) = alpha
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > alpha else (lo, mid)
    return hi


# ------------------------------------------------------------------ decisions

# A rule maps (cosine, guard verdict, threshold) to hit/miss for every pair at once.
Rule = Callable[[np.ndarray, np.ndarray, float], np.ndarray]
RULES: dict[str, Rule] = {
    "cosine": lambda cos, ok, t: cos >= t,
    "cosine+guard": lambda cos, ok, t: (cos >= t) & ok,
}


class Evaluation:
    """Cosines and guard verdicts of every pair, scored per split, rule and threshold."""

    def __init__(self, pairs: list[Pair], test: list[Pair], embedder) -> None:
        self.split_of = assign_splits(pairs, test)
        pairs = pairs + test
        self.pairs = pairs
        self.split = np.array([self.split_of[p.topic] for p in pairs])
        self.same = np.array([p.same for p in pairs])
        texts = sorted({p.a for p in pairs} | {p.b for p in pairs})
        index = {t: i for i, t in enumerate(texts)}
        vectors = embedder.embed(texts)
        a = vectors[[index[p.a] for p in pairs]]
        b = vectors[[index[p.b] for p in pairs]]
        self.cos = np.sum(a * b, axis=1)  # unit vectors: the dot product is the cosine
        self.verdicts, self.guard_us = _guard_verdicts(pairs)
        self.guard_ok = np.array([ok for ok, _ in self.verdicts])

    def mask(self, *splits: str) -> np.ndarray:
        return np.isin(self.split, splits)

    def hits(self, rule: str, threshold: float) -> np.ndarray:
        return RULES[rule](self.cos, self.guard_ok, threshold)

    def score(self, rule: str, threshold: float, *splits: str) -> dict:
        m = self.mask(*splits)
        hit = self.hits(rule, threshold)
        same, diff = m & self.same, m & ~self.same
        tp, fp = int(np.sum(hit & same)), int(np.sum(hit & diff))
        n_same, n_diff = int(same.sum()), int(diff.sum())
        return {
            "recall": tp / n_same if n_same else 0.0,
            "true_hits": tp,
            "paraphrases": n_same,
            "false_hits": fp,
            "near_misses": n_diff,
            "false_hit_rate": fp / n_diff if n_diff else 0.0,
            "false_hit_ub": clopper_pearson_upper(fp, n_diff),
        }

    def choose(self, rule: str, splits: tuple[str, ...] = DEVELOPMENT) -> float | None:
        """Highest-recall threshold on ``splits`` with the false-hit upper bound in bounds
        (among equal recalls the higher threshold)."""
        ok = [(s["recall"], t) for t in THRESHOLDS
              if (s := self.score(rule, t, *splits))["false_hit_ub"] <= MAX_FALSE_HIT_UB]
        return max(ok)[1] if ok else None

    def listing(self, rule: str, threshold: float, split: str) -> dict[str, list[dict]]:
        """The false hits and the missed paraphrases of one split, for reading."""
        hit = self.hits(rule, threshold)
        out: dict[str, list[dict]] = {"false_hits": [], "missed_paraphrases": []}
        for i, p in enumerate(self.pairs):
            if self.split[i] != split or hit[i] == p.same:
                continue
            row = {"topic": p.topic, "kind": p.kind, "a": p.a, "b": p.b,
                   "cosine": round(float(self.cos[i]), 4), "guard": self.verdicts[i][1]}
            out["false_hits" if hit[i] else "missed_paraphrases"].append(row)
        return out

    def by_kind(self, rule: str, threshold: float, split: str) -> dict[str, dict]:
        hit = self.hits(rule, threshold)
        kinds: dict[str, dict] = defaultdict(lambda: {"label": "", "pairs": 0, "hits": 0})
        for i, p in enumerate(self.pairs):
            if self.split[i] == split:
                k = kinds[f"{'=' if p.same else '!'} {p.kind}"]
                k["label"] = "paraphrase" if p.same else "near miss"
                k["pairs"], k["hits"] = k["pairs"] + 1, k["hits"] + int(hit[i])
        return dict(sorted(kinds.items()))


def _guard_verdicts(pairs: list[Pair]) -> tuple[list[tuple[bool, str]], float]:
    """Guard verdicts (as the store calls it: new prompt b against stored prompt a) and the
    mean time per pair with no cached features."""
    verdicts = []
    start = time.perf_counter()
    for p in pairs:
        guard.features.cache_clear()
        verdicts.append(guard.check(p.b, p.a))
    return verdicts, (time.perf_counter() - start) / len(pairs) * 1e6


# ------------------------------------------------------------------ report

def score_legacy(pairs: list[Pair], embedder, rule: str, threshold: float) -> dict:
    """Recall and false hits of an earlier pair set at the chosen setting."""
    texts = sorted({p.a for p in pairs} | {p.b for p in pairs})
    index = {t: i for i, t in enumerate(texts)}
    vectors = embedder.embed(texts)
    cos = np.array([float(vectors[index[p.a]] @ vectors[index[p.b]]) for p in pairs])
    ok = np.array([guard.check(p.b, p.a)[0] for p in pairs])
    same = np.array([p.same for p in pairs])
    hit = RULES[rule](cos, ok, threshold)
    fp, n_diff = int(np.sum(hit & ~same)), int((~same).sum())
    return {"pairs": len(pairs), "recall": float(np.mean(hit[same])), "true_hits": int(np.sum(hit & same)),
            "paraphrases": int(same.sum()), "false_hits": fp, "near_misses": n_diff,
            "false_hit_rate": fp / n_diff, "false_hit_ub": clopper_pearson_upper(fp, n_diff)}


def report(ev: Evaluation) -> dict:
    choices = {rule: ev.choose(rule) for rule in RULES}
    qualified = {r: t for r, t in choices.items() if t is not None}
    best_rule = max(qualified, key=lambda r: (ev.score(r, qualified[r], *DEVELOPMENT)["recall"], r),
                    default=None)
    out: dict = {
        "embedder": "all-MiniLM-L6-v2 (core.embedder, ONNX Runtime)",
        "machine": machine(),
        "pairs_dirs": [str(PAIRS_DIR.relative_to(ROOT)), str(TEST_DIR.relative_to(ROOT))],
        "rule": {"confidence": CONFIDENCE, "bound": "exact one-sided Clopper-Pearson upper bound",
                 "max_false_hit_ub": MAX_FALSE_HIT_UB, "chosen_on": list(DEVELOPMENT)},
        "round1": ROUND1,
        "guard_us_per_pair": ev.guard_us,
        "splits": {s: {"topics": sorted(t for t, v in ev.split_of.items() if v == s),
                       "pairs": int(ev.mask(s).sum()),
                       "paraphrases": int((ev.mask(s) & ev.same).sum()),
                       "near_misses": int((ev.mask(s) & ~ev.same).sum())} for s in SPLITS},
        "choices": {r: t for r, t in choices.items()},
        "chosen": None if best_rule is None else {"rule": best_rule, "threshold": qualified[best_rule],
                                                  "guard": "guard" in best_rule},
        "table": {r: [{"threshold": t, **{s: ev.score(r, t, s) for s in SPLITS},
                       "development": ev.score(r, t, *DEVELOPMENT)} for t in THRESHOLDS] for r in RULES},
    }
    if best_rule is not None:
        t = qualified[best_rule]
        out["result"] = {s: ev.score(best_rule, t, s) for s in SPLITS}
        out["result"]["development"] = ev.score(best_rule, t, *DEVELOPMENT)
        test = out["result"]["test"]
        out["meets_target"] = test["recall"] >= TARGET_RECALL and test["false_hit_ub"] <= MAX_FALSE_HIT_UB
        out["by_kind_test"] = ev.by_kind(best_rule, t, "test")
        out["listing"] = {s: ev.listing(best_rule, t, s) for s in SPLITS}
    return out


def _fmt(s: dict) -> str:
    return (f"{s['recall']:.1%} ({s['true_hits']}/{s['paraphrases']}) | {s['false_hits']}/{s['near_misses']}"
            f" ({s['false_hit_rate']:.2%}) | {s['false_hit_ub']:.2%}")


def markdown(rep: dict) -> str:
    dirs = " and ".join(f"`{d}`" for d in rep["pairs_dirs"])
    lines = ["# Semantic cache evaluation", "",
             f"Embedder: {rep['embedder']}. Guard: {rep['guard_us_per_pair']:.0f} µs per pair with no cached"
             f" features. Pairs: {dirs} (how they were made: core/cache/data/README.md).", "",
             "| split | role | topics | pairs | paraphrases | near misses |", "|---|---|---:|---:|---:|---:|"]
    for s, v in rep["splits"].items():
        role = "held out, scored once" if s == "test" else "development"
        lines.append(f"| {s} | {role} | {len(v['topics'])} | {v['pairs']} | {v['paraphrases']} |"
                     f" {v['near_misses']} |")
    r1, rule = rep["round1"], rep["rule"]
    lines += ["", f"Round 1 (earlier guard): chosen on tune+dev, cosine >= {r1['threshold']} + guard"
              f" ({r1['tune+dev']['recall']:.1%} recall, {r1['tune+dev']['false_hits']}/"
              f"{r1['tune+dev']['near_misses']} false hits, UB {r1['tune+dev']['ub']:.2%}); test1, then held"
              f" out, scored once: {r1['test1']['recall']:.1%} recall, {r1['test1']['false_hits']}/"
              f"{r1['test1']['near_misses']} false hits, UB {r1['test1']['ub']:.2%}: target missed. Round 2"
              " read test1's errors to improve the guard (so test1 became development data) and scores a"
              " fresh test set written before those changes.", "",
              f"Rule: highest recall on {'+'.join(rule['chosen_on'])} (pooled) with the false-hit"
              f" {rule['bound']} ({rule['confidence']:.0%}) <= {rule['max_false_hit_ub']:.0%}."
              " The test split is scored once, at the chosen setting.", ""]
    for rule, t in rep["choices"].items():
        lines.append(f"- {rule}: {'threshold ' + str(t) if t is not None else 'no threshold qualifies'}")
    chosen = rep["chosen"]
    if chosen is None:
        return "\n".join(lines) + "\n"
    lines += ["", f"**Chosen: {chosen['rule']} at {chosen['threshold']}.**", "",
              "| split | recall | false hits | false-hit 95% UB |", "|---|---:|---:|---:|"]
    for s in (*SPLITS, "development"):
        lines.append(f"| {s} | {_fmt(rep['result'][s])} |")
    lines += ["", f"Target on test (recall >= {TARGET_RECALL:.0%}, UB <= {MAX_FALSE_HIT_UB:.0%}): "
              f"{'met' if rep['meets_target'] else 'NOT met'}.", ""]
    for rule, rows in rep["table"].items():
        lines += [f"## {rule}: by threshold", "",
                  "| threshold | development recall | development false hits | development UB | test recall"
                  " | test false hits | test UB |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            mark = " **←**" if rule == chosen["rule"] and row["threshold"] == chosen["threshold"] else ""
            dev, test = _fmt(row["development"]), _fmt(row["test"])
            lines.append(f"| {row['threshold']:.2f}{mark} | {dev} | {test} |")
        lines.append("")
    lines += ["(test columns: reported only, never used to choose)", "",
              f"## By kind, test split, {chosen['rule']} at {chosen['threshold']}", "",
              "| kind | label | pairs | hits |", "|---|---|---:|---:|"]
    for kind, k in rep["by_kind_test"].items():
        lines.append(f"| {kind[2:]} | {k['label']} | {k['pairs']} | {k['hits']} |")
    lines += ["", "Earlier pair sets at the chosen setting (not used to choose; their topics overlap every"
              " split):", "", "| set | recall | false hits | false-hit 95% UB |", "|---|---:|---:|---:|"]
    for name, r in rep.get("legacy", {}).items():
        lines.append(f"| `{name}` | {_fmt(r)} |")
    for s in SPLITS:
        fh = rep["listing"][s]["false_hits"]
        lines += ["", f"False hits, {s}:", ""]
        lines += [f"- {r['cosine']:.3f} [{r['topic']}/{r['kind']}] {r['a']!r} ~ {r['b']!r}"
                  for r in fh] or ["- none"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()

    from core.embedder import Embedder

    embedder = Embedder.load(threads=args.threads)
    ev = Evaluation(load_pairs(), load_pairs(TEST_DIR), embedder)
    rep = report(ev)
    if rep["chosen"] is not None:
        rule, t = rep["chosen"]["rule"], rep["chosen"]["threshold"]
        rep["legacy"] = {str(path.relative_to(ROOT)): score_legacy(load_legacy(path), embedder, rule, t)
                         for path in LEGACY if path.is_file()}
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(rep)
    (args.out / "cache_eval.json").write_text(json.dumps(rep, indent=2, ensure_ascii=False) + "\n")
    (args.out / "cache_eval.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
