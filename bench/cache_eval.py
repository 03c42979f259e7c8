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
  round-2 change; scored once in round 2 (ROUND2: missed), development data since.
- test2: core/cache/data/pairs_test2/, written before any round-3 change; scored
  once in round 3 (ROUND3: missed), development data since.
- test3: core/cache/data/pairs_test3/, written before any round-4 change; scored
  once in round 4 (ROUND4: missed), development data since.
- test5: core/cache/data/pairs_test5/, written before any round-5 change; scored
  once in round 5 (ROUND5: missed), development data since.
- test6: core/cache/data/pairs_test6/, written before any round-6 change; scored
  once in round 6 (ROUND6: missed), development data since.
- test7: core/cache/data/pairs_test7/, written before any round-7 change; scored
  once in round 7 (ROUND7: missed), development data since.
- test8: core/cache/data/pairs_test8/, written and committed before any round-8
  change and without looking at a score, twice the size of the older held-out sets
  (1,194 near misses: the 1 % bound holds up to 6 false hits); scored once at the
  chosen setting.

Decision rules: cosine alone, cosine + guard (by cosine threshold), and
cosine + guard + align (core/cache/align.py: candidates with cosine >=
MIN_COSINE that pass the guard, or that it refuses softly (guard.soft: one word
replaced), are no swap and that core/cache/slots.py does not refuse (a question
word, a direction, a polarity or two roles that differ); a trivial edit
(slots.trivial_edit: typos, inflection, framing, context sentences) is a hit from
cosine TRIVIAL_MIN_COSINE on, the others go to a logistic model of cosine, the guard's verdict,
token alignment, the edit's shape and the aligned differing spans, fitted here on
the development candidates; by threshold on its logit).
For every rule and threshold the pooled development pairs give recall and the
false-hit rate with its exact one-sided Clopper-Pearson upper bound. The chosen
setting has the highest development recall whose false-hit upper bound is <=
a bound calibrated on development: the least strict of CHOICE_UB_GRID for which
leave-one-split-out (the whole procedure, fit and threshold, on the other
development splits, scored on the one left out) keeps the pooled false-hit upper
bound <= MAX_LOSO_UB. Round 3 chose at 1 % on the pooled development splits
and its held-out rate was six times the development rate; the calibration asks
the bound to hold on topics the choice has not seen, before the held-out set is looked at.
Rounds 4 and 5 met 1 % in leave-one-split-out and still missed it on the held-out
set (about four times the rate: each new set brings near misses of kinds the
older ones hold few of), so MAX_LOSO_UB was half the target in round 6; round 6's held-out rate
was five times its leave-one-split-out rate again (6/571 against 7/3401), so from round 7 on
MAX_LOSO_UB is a fifth of the target (set before test7 was scored, from rounds 4-6 only; kept in
round 8).
The served defaults (core/cache/config.py, core/cache/align.py) must equal the
choice (tests/cache/test_cache_eval.py).
Writes bench/results/cache_eval.{json,md}.

    python -m bench.cache_eval [--out DIR] [--development-only]

--development-only leaves the held-out set out (it is neither loaded nor scored): for
working on the decision without spending the held-out split.
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from core.cache import align, guard, slots  # noqa: E402

PAIRS_DIR = ROOT / "core" / "cache" / "data" / "pairs"
TEST_DIR = ROOT / "core" / "cache" / "data" / "pairs_test"
TEST2_DIR = ROOT / "core" / "cache" / "data" / "pairs_test2"
TEST3_DIR = ROOT / "core" / "cache" / "data" / "pairs_test3"
TEST5_DIR = ROOT / "core" / "cache" / "data" / "pairs_test5"
TEST6_DIR = ROOT / "core" / "cache" / "data" / "pairs_test6"
TEST7_DIR = ROOT / "core" / "cache" / "data" / "pairs_test7"
TEST8_DIR = ROOT / "core" / "cache" / "data" / "pairs_test8"
# The earlier sets (the guard was first written against the first): scored at the chosen
# setting for comparison, never used to choose; their topics overlap every split.
LEGACY = [ROOT / "core" / "cache" / "data" / "semantic_pairs.jsonl",
          ROOT / "core" / "cache" / "data" / "semantic_pairs_holdout.jsonl"]
SPLITS = ("tune", "dev", "test1", "test", "test2", "test3", "test5", "test6", "test7", "test8")
# the choice is made on these, pooled
DEVELOPMENT = ("tune", "dev", "test1", "test", "test2", "test3", "test5", "test6", "test7")
HELD_OUT = "test8"
# The sets written after core/cache/data/pairs, each its own split (by topic).
EXTRA_SETS = {"test": TEST_DIR, "test2": TEST2_DIR, "test3": TEST3_DIR, "test5": TEST5_DIR,
              "test6": TEST6_DIR, "test7": TEST7_DIR, "test8": TEST8_DIR}
# Shares of core/cache/data/pairs (test1 has half: with ~560 near misses one false hit
# still bounds the rate under 1 %); the test split is core/cache/data/pairs_test.
SPLIT_SHARES = {"tune": 0.30, "dev": 0.20, "test1": 0.50}
# Round 1 (guard of commit 2633429): chosen on tune+dev, cosine >= 0.90 + guard; test1
# scored once. Kept as it was measured.
ROUND1 = {"threshold": 0.90, "tune+dev": {"recall": 0.603, "false_hits": 1, "near_misses": 575, "ub": 0.0082},
          "test1": {"recall": 0.598, "false_hits": 6, "near_misses": 564, "ub": 0.0209}}
# Round 2 (guard of commit ab07031): chosen on tune+dev+test1, cosine >= 0.90 + guard; test
# scored once. Kept as it was measured.
ROUND2 = {"threshold": 0.90, "test": {"recall": 0.513, "false_hits": 4, "near_misses": 473, "ub": 0.0192}}
# Round 3 (guard + second stage of commit 819a18c): chosen on tune+dev+test1+test, cosine >=
# 0.85 + guard + align at logit 2.75; test2 scored once. Kept as it was measured.
ROUND3 = {"threshold": 2.75, "test2": {"recall": 0.584, "true_hits": 213, "paraphrases": 365,
                                       "false_hits": 15, "near_misses": 596, "ub": 0.0385}}
# Round 4 (commit 54daed5): chosen on tune+dev+test1+test+test2, cosine >= 0.85 + guard + align
# at logit 2.0; test3 scored once. Kept as it was measured.
ROUND4 = {"threshold": 2.0, "test3": {"recall": 0.548, "true_hits": 213, "paraphrases": 389,
                                      "false_hits": 16, "near_misses": 594, "ub": 0.0406}}
# Round 5 (commit d618b76): chosen on tune+dev+test1+test+test2+test3, cosine >= 0.80 + guard +
# align at logit 3.0; test5 scored once. Kept as it was measured.
ROUND5 = {"threshold": 3.0, "test5": {"recall": 0.624, "true_hits": 229, "paraphrases": 367,
                                      "false_hits": 16, "near_misses": 599, "ub": 0.0403}}
# Round 6 (commit 2a77acc): chosen on tune+dev+test1+test+test2+test3+test5,
# cosine >= 0.80 + guard + slot refusals + align at logit 3.25; test6 scored once. Kept as it was measured.
ROUND6 = {"threshold": 3.25, "test6": {"recall": 0.610, "true_hits": 219, "paraphrases": 359,
                                       "false_hits": 6, "near_misses": 571, "ub": 0.0206}}
# Round 7 (commit 40e934d): chosen on tune+dev+test1+test+test2+test3+test5+test6, cosine >= 0.80 +
# guard + slot and role refusals + align at logit 3.5; test7 scored once. Kept as it was measured.
ROUND7 = {"threshold": 3.5, "test7": {"recall": 0.681, "true_hits": 250, "paraphrases": 367,
                                      "false_hits": 4, "near_misses": 570, "ub": 0.0160}}
CONFIDENCE = 0.95
MAX_FALSE_HIT_UB = 0.01  # the target, on the held-out split
MAX_LOSO_UB = 0.002  # what leave-one-split-out must show for the choice (see the docstring)
# Bounds the choice may use on the pooled development splits, least strict first: calibrate()
# takes the first whose leave-one-split-out result stays within MAX_FALSE_HIT_UB.
CHOICE_UB_GRID = (0.01, 0.0075, 0.005, 0.004, 0.003, 0.0025, 0.002, 0.0015, 0.001)
TARGET_RECALL = 0.60
THRESHOLDS = [round(0.70 + 0.01 * i, 2) for i in range(30)]
ALIGN_THRESHOLDS = [round(-1.0 + 0.25 * i, 2) for i in range(33)]  # on the logit
ALIGN_RULE = "cosine+guard+align"


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


def assign_splits(pairs: list[Pair], test: list[Pair] = (), test2: list[Pair] = (),
                  test3: list[Pair] = (), test5: list[Pair] = (), test6: list[Pair] = (),
                  test7: list[Pair] = (), test8: list[Pair] = ()) -> dict[str, str]:
    """topic -> split. Development topics in a fixed pseudo-random order (sha256 of the name),
    cut by share of pairs: the assignment depends on the topic names and sizes only, never on
    scores. Every topic of ``test`` goes to the test split, of ``test2`` to test2, and so on."""
    sizes = Counter(p.topic for p in pairs)
    order = sorted(sizes, key=lambda t: hashlib.sha256(t.encode()).hexdigest())
    total, done, out = sum(sizes.values()), 0, {}
    shares = [SPLIT_SHARES[s] for s in SPLIT_SHARES]
    bounds = np.cumsum(shares)
    for topic in order:
        share = (done + sizes[topic] / 2) / total  # the topic goes where its middle falls
        out[topic] = list(SPLIT_SHARES)[int(np.searchsorted(bounds, share, side="right"))]
        done += sizes[topic]
    for name, extra in (("test", test), ("test2", test2), ("test3", test3), ("test5", test5),
                        ("test6", test6), ("test7", test7), ("test8", test8)):
        for p in extra:
            if out.get(p.topic, name) != name:
                raise ValueError(f"topic {p.topic!r} is in another split and in the {name} set")
            out[p.topic] = name
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

def best_threshold(score: np.ndarray, same: np.ndarray, grid: list[float],
                   bound: float = MAX_FALSE_HIT_UB) -> float | None:
    """Highest-recall threshold of ``grid`` with the false-hit upper bound <= ``bound`` (among
    equal recalls the higher threshold); None if none qualifies."""
    n_same, n_diff = int(same.sum()), int((~same).sum())
    ok = []
    for t in grid:
        hit = score >= t
        if clopper_pearson_upper(int(np.sum(hit & ~same)), n_diff) <= bound:
            ok.append((np.sum(hit & same) / max(n_same, 1), t))
    return max(ok)[1] if ok else None


class Evaluation:
    """Cosines, guard verdicts and alignment features of every pair, scored per split, rule
    and threshold."""

    def __init__(self, pairs: list[Pair], extra: dict[str, list[Pair]], embedder) -> None:
        """``extra``: the later sets by split name (EXTRA_SETS); a missing one is left out (a
        development-only run leaves out the held-out set and never scores it)."""
        self.split_of = assign_splits(pairs, *(extra.get(name, ()) for name in EXTRA_SETS))
        pairs = pairs + [p for name in EXTRA_SETS for p in extra.get(name, ())]
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
        self.guard_soft = np.array([not ok and guard.soft(reason) for ok, reason in self.verdicts])
        self.guard_yields = np.array([not ok and guard.yields_to_trivial(reason)
                                      for ok, reason in self.verdicts])
        tokens = [tv for start in range(0, len(texts), 64)
                  for tv in embedder.embed_tokens(texts[start:start + 64])]
        start = time.perf_counter()
        self.features = np.array([align.features(c, ok, tokens[index[p.b]], tokens[index[p.a]], (p.b, p.a))
                                  for p, c, ok in zip(pairs, self.cos, self.guard_ok, strict=True)])
        self.swapped = np.array([align.structure(tokens[index[p.b]], tokens[index[p.a]])[0] for p in pairs])
        self.refused = np.array([slots.refusal(p.b, p.a, tokens[index[p.b]], tokens[index[p.a]]) is not None
                                 for p in pairs])
        self.trivial = np.array([slots.trivial_edit(p.b, p.a) for p in pairs])
        self.align_us = (time.perf_counter() - start) / len(pairs) * 1e6
        self.bound = MAX_FALSE_HIT_UB  # the development bound of choose(); calibrate() sets it
        self.weights = self.fit(DEVELOPMENT)
        self.logit = self.logits(self.weights)

    def candidates(self) -> np.ndarray:
        """Pairs the model decides: over the cosine floor, passed (or softly refused) by the
        guard, no swap, not refused by core/cache/slots.py."""
        return ((self.cos >= align.MIN_COSINE) & (self.guard_ok | self.guard_soft) & ~self.swapped
                & ~self.refused)

    def fit(self, splits: tuple[str, ...]) -> tuple[float, ...]:
        """The logistic model on the candidates of ``splits``: the model only ever decides
        among candidates, so the pairs the guard refuses would only pull it elsewhere."""
        m = self.mask(*splits) & self.candidates()
        return align.fit_logistic(self.features[m], self.same[m].astype(float))

    def trivial_path(self) -> np.ndarray:
        """Pairs accepted without the model (align.accepts): a trivial edit at cosine >=
        TRIVIAL_MIN_COSINE that the guard passes (or refuses softly, or for an entity:
        guard.yields_to_trivial), no swap, no slot refusal."""
        return (self.trivial & (self.cos >= align.TRIVIAL_MIN_COSINE)
                & (self.guard_ok | self.guard_soft | self.guard_yields) & ~self.swapped & ~self.refused)

    def logits(self, weights: tuple[float, ...]) -> np.ndarray:
        """The model's logit of each candidate, +inf on the trivial path, -inf for the rest."""
        z = self.features @ np.asarray(weights[:-1]) + weights[-1]
        return np.where(self.trivial_path(), np.inf, np.where(self.candidates(), z, -np.inf))

    def mask(self, *splits: str) -> np.ndarray:
        return np.isin(self.split, splits)

    def hits(self, rule: str, threshold: float) -> np.ndarray:
        if rule == "cosine":
            return self.cos >= threshold
        if rule == "cosine+guard":
            return (self.cos >= threshold) & self.guard_ok
        return self.logit >= threshold

    def score(self, rule: str, threshold: float, *splits: str, hit: np.ndarray | None = None) -> dict:
        m = self.mask(*splits)
        hit = self.hits(rule, threshold) if hit is None else hit
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
        m = self.mask(*splits)
        score = {"cosine": self.cos, "cosine+guard": np.where(self.guard_ok, self.cos, -np.inf)}.get(rule)
        if rule == ALIGN_RULE:
            score = self.logit if splits == DEVELOPMENT else self.logits(self.fit(splits))
        return best_threshold(score[m], self.same[m], grid_of(rule), self.bound)

    def cross_validated(self, rule: str) -> dict:
        """The whole procedure (fit, then threshold) on all development splits but one, scored on
        the one left out, for each: an estimate of how the choice does on topics it has not seen."""
        hit = np.zeros(len(self.pairs), bool)
        folds = {}
        for held in DEVELOPMENT:
            rest = tuple(s for s in DEVELOPMENT if s != held)
            t = self.choose(rule, rest)
            if rule == ALIGN_RULE:
                fold_hit = self.logits(self.fit(rest)) >= t if t is not None else hit & False
            else:
                fold_hit = self.hits(rule, t) if t is not None else hit & False
            m = self.mask(held)
            hit[m] = fold_hit[m]
            folds[held] = {"threshold": t, **self.score(rule, 0.0, held, hit=hit)}
        return {"folds": folds, "pooled": self.score(rule, 0.0, *DEVELOPMENT, hit=hit)}

    def listing(self, rule: str, threshold: float, split: str) -> dict[str, list[dict]]:
        """The false hits and the missed paraphrases of one split, for reading."""
        hit = self.hits(rule, threshold)
        out: dict[str, list[dict]] = {"false_hits": [], "missed_paraphrases": []}
        for i, p in enumerate(self.pairs):
            if self.split[i] != split or hit[i] == p.same:
                continue
            row = {"topic": p.topic, "kind": p.kind, "a": p.a, "b": p.b,
                   "cosine": round(float(self.cos[i]), 4), "guard": self.verdicts[i][1],
                   "logit": round(float(self.logit[i]), 3) if np.isfinite(self.logit[i]) else None}
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


RULES = ("cosine", "cosine+guard", ALIGN_RULE)


def grid_of(rule: str) -> list[float]:
    return ALIGN_THRESHOLDS if rule == ALIGN_RULE else THRESHOLDS


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

def score_legacy(pairs: list[Pair], embedder, rule: str, threshold: float,
                 weights: tuple[float, ...]) -> dict:
    """Recall and false hits of an earlier pair set at the chosen setting."""
    texts = sorted({p.a for p in pairs} | {p.b for p in pairs})
    index = {t: i for i, t in enumerate(texts)}
    vectors = embedder.embed(texts)
    tokens = embedder.embed_tokens(texts)
    cos = np.array([float(vectors[index[p.a]] @ vectors[index[p.b]]) for p in pairs])
    verdicts = [guard.check(p.b, p.a) for p in pairs]
    ok = np.array([g for g, _ in verdicts])
    if rule == ALIGN_RULE:
        hit = np.array([(g or guard.soft(reason)
                         or (guard.yields_to_trivial(reason) and slots.trivial_edit(p.b, p.a)))
                        and align.accepts(c, g, tokens[index[p.b]], tokens[index[p.a]], weights, threshold,
                                          texts=(p.b, p.a))
                        for p, c, (g, reason) in zip(pairs, cos, verdicts, strict=True)])
    else:
        hit = (cos >= threshold) & (ok if rule == "cosine+guard" else True)
    same = np.array([p.same for p in pairs])
    fp, n_diff = int(np.sum(hit & ~same)), int((~same).sum())
    return {"pairs": len(pairs), "recall": float(np.mean(hit[same])), "true_hits": int(np.sum(hit & same)),
            "paraphrases": int(same.sum()), "false_hits": fp, "near_misses": n_diff,
            "false_hit_rate": fp / n_diff, "false_hit_ub": clopper_pearson_upper(fp, n_diff)}


def lookup_cost_ms(embedder, pairs: list[Pair], candidates: int = 3, rounds: int = 50) -> float:
    """Median time of the second stage's encoder call as the store makes it: one prompt and
    ``candidates`` stored prompts in one batch."""
    rng = np.random.default_rng(0)
    prompts = [p.a for p in pairs]
    times = []
    for _ in range(rounds):
        batch = [prompts[i] for i in rng.choice(len(prompts), candidates + 1, replace=False)]
        start = time.perf_counter()
        embedder.embed_tokens(batch)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def stored_vectors_cost(embedder, pairs: list[Pair], candidates: int = 3, rounds: int = 200) -> dict:
    """What the second stage costs a lookup when each entry keeps its token vectors
    (align.pack at put time): unpacking ``candidates`` entries and scoring them against the
    prompt (whose vectors the lookup's own embedding run gave), median over ``rounds``; and
    the size of a packed entry (metadata, on disk with the entry)."""
    rng = np.random.default_rng(0)
    prompts = sorted({p.a for p in pairs})
    sample = [prompts[i] for i in rng.choice(len(prompts), 400, replace=False)]
    packed = [align.pack(tv) for tv in embedder.embed_tokens(sample)]
    times = []
    for _ in range(rounds):
        i, *js = rng.choice(len(sample), candidates + 1, replace=False)
        mine = align.unpack(packed[i])
        start = time.perf_counter()
        for j in js:
            align.accepts(0.9, True, mine, align.unpack(packed[j]), texts=(sample[i], sample[j]))
        times.append((time.perf_counter() - start) * 1000)
    sizes = np.array([len(p) for p in packed])
    return {"ms_per_lookup": float(np.median(times)), "bytes_per_entry_median": int(np.median(sizes)),
            "bytes_per_entry_p95": int(np.percentile(sizes, 95))}


def calibrate(ev: Evaluation) -> tuple[float, list[dict]]:
    """The development bound: the least strict of CHOICE_UB_GRID whose leave-one-split-out
    result (second stage) keeps the pooled false-hit upper bound <= MAX_LOSO_UB (the
    strictest if none does). Development splits only."""
    rows = []
    for bound in CHOICE_UB_GRID:
        ev.bound = bound
        rows.append({"bound": bound, **ev.cross_validated(ALIGN_RULE)["pooled"]})
        if rows[-1]["false_hit_ub"] <= MAX_LOSO_UB:
            return bound, rows
    return CHOICE_UB_GRID[-1], rows


def report(ev: Evaluation) -> dict:
    ev.bound, calibration = calibrate(ev)
    choices = {rule: ev.choose(rule) for rule in RULES}
    qualified = {r: t for r, t in choices.items() if t is not None}
    best_rule = max(qualified, key=lambda r: (ev.score(r, qualified[r], *DEVELOPMENT)["recall"], r),
                    default=None)
    out: dict = {
        "embedder": "all-MiniLM-L6-v2 (core.embedder, ONNX Runtime)",
        "machine": machine(),
        "pairs_dirs": [str(d.relative_to(ROOT)) for d in (PAIRS_DIR, *EXTRA_SETS.values())],
        "rule": {"confidence": CONFIDENCE, "bound": "exact one-sided Clopper-Pearson upper bound",
                 "max_false_hit_ub": MAX_FALSE_HIT_UB, "max_loso_ub": MAX_LOSO_UB, "choice_ub": ev.bound,
                 "calibration": calibration,
                 "chosen_on": list(DEVELOPMENT), "held_out": HELD_OUT},
        "round1": ROUND1,
        "round2": ROUND2,
        "round3": ROUND3,
        "round4": ROUND4,
        "round5": ROUND5,
        "round6": ROUND6,
        "round7": ROUND7,
        "guard_us_per_pair": ev.guard_us,
        "align_us_per_pair": ev.align_us,
        "align": {"min_cosine": align.MIN_COSINE, "trivial_min_cosine": align.TRIVIAL_MIN_COSINE,
                  "features": list(align.FEATURES),
                  "weights": list(ev.weights)},
        "splits": {s: {"topics": sorted(t for t, v in ev.split_of.items() if v == s),
                       "pairs": int(ev.mask(s).sum()),
                       "paraphrases": int((ev.mask(s) & ev.same).sum()),
                       "near_misses": int((ev.mask(s) & ~ev.same).sum())} for s in SPLITS},
        "choices": {r: t for r, t in choices.items()},
        "cross_validated": {r: ev.cross_validated(r) for r in RULES},
        "chosen": None if best_rule is None else {"rule": best_rule, "threshold": qualified[best_rule],
                                                  "guard": "guard" in best_rule,
                                                  "rescore": best_rule == ALIGN_RULE},
        "table": {r: [{"threshold": t, **{s: ev.score(r, t, s) for s in SPLITS},
                       "development": ev.score(r, t, *DEVELOPMENT)} for t in grid_of(r)] for r in RULES},
    }
    if best_rule is not None:
        t = qualified[best_rule]
        out["result"] = {s: ev.score(best_rule, t, s) for s in SPLITS}
        out["result"]["development"] = ev.score(best_rule, t, *DEVELOPMENT)
        held = out["result"][HELD_OUT]
        out["meets_target"] = held["recall"] >= TARGET_RECALL and held["false_hit_ub"] <= MAX_FALSE_HIT_UB
        out["by_kind_held_out"] = ev.by_kind(best_rule, t, HELD_OUT)
        out["listing"] = {s: ev.listing(best_rule, t, s) for s in SPLITS}
    return out


def _fmt(s: dict) -> str:
    return (f"{s['recall']:.1%} ({s['true_hits']}/{s['paraphrases']}) | {s['false_hits']}/{s['near_misses']}"
            f" ({s['false_hit_rate']:.2%}) | {s['false_hit_ub']:.2%}")


def markdown(rep: dict) -> str:
    dirs = ", ".join(f"`{d}`" for d in rep["pairs_dirs"])
    al = rep["align"]
    sv = rep.get("stored_vectors", {})
    lines = ["# Semantic cache evaluation", "",
             f"Embedder: {rep['embedder']}. Guard: {rep['guard_us_per_pair']:.0f} µs per pair with no cached"
             f" features. Second stage (core/cache/align.py): {rep['align_us_per_pair']:.0f} µs per pair for"
             f" the features and the logit. Each entry keeps its prompt's token vectors (align.pack at put"
             f" time, int8: {sv.get('bytes_per_entry_median', 0) / 1024:.1f} KB median,"
             f" {sv.get('bytes_per_entry_p95', 0) / 1024:.1f} KB p95 of metadata per entry), so a lookup"
             f" runs no encoder for the second stage: unpacking and scoring 3 candidates takes"
             f" {sv.get('ms_per_lookup', float('nan')):.2f} ms median, where encoding the prompt and 3"
             f" candidates took {rep.get('encoder_ms_per_lookup', float('nan')):.1f} ms (1 thread; the"
             " prompt's vectors come from the lookup's own embedding run)."
             f" Pairs: {dirs} (how they were made: core/cache/data/README.md).", "",
             "| split | role | topics | pairs | paraphrases | near misses |", "|---|---|---:|---:|---:|---:|"]
    for s, v in rep["splits"].items():
        role = "held out, scored once" if s == rep["rule"]["held_out"] else "development"
        lines.append(f"| {s} | {role} | {len(v['topics'])} | {v['pairs']} | {v['paraphrases']} |"
                     f" {v['near_misses']} |")
    r1, r2, r3, r4, rule = rep["round1"], rep["round2"], rep["round3"], rep["round4"], rep["rule"]
    t3, r5 = r4["test3"], rep["round5"]
    t5, r6 = r5["test5"], rep["round6"]
    t6, r7 = r6["test6"], rep["round7"]
    t7 = r7["test7"]
    lines += ["", f"Round 1 (earlier guard): chosen on tune+dev, cosine >= {r1['threshold']} + guard"
              f" ({r1['tune+dev']['recall']:.1%} recall, {r1['tune+dev']['false_hits']}/"
              f"{r1['tune+dev']['near_misses']} false hits, UB {r1['tune+dev']['ub']:.2%}); test1, then held"
              f" out, scored once: {r1['test1']['recall']:.1%} recall, {r1['test1']['false_hits']}/"
              f"{r1['test1']['near_misses']} false hits, UB {r1['test1']['ub']:.2%}: target missed. Round 2"
              f" (improved guard, chosen on tune+dev+test1, cosine >= {r2['threshold']} + guard) scored test"
              f" once: {r2['test']['recall']:.1%} recall, {r2['test']['false_hits']}/"
              f"{r2['test']['near_misses']} false hits, UB {r2['test']['ub']:.2%}: missed; test became"
              " development data. Round 3 (the second stage, chosen on tune+dev+test1+test, logit >="
              f" {r3['threshold']}) scored test2 once: {r3['test2']['recall']:.1%} recall"
              f" ({r3['test2']['true_hits']}/{r3['test2']['paraphrases']}), {r3['test2']['false_hits']}/"
              f"{r3['test2']['near_misses']} false hits, UB {r3['test2']['ub']:.2%}: missed; test2 became"
              " development data. Round 4 (swaps refused, edit-shape features, chosen on"
              f" tune+dev+test1+test+test2, logit >= {r4['threshold']}) scored test3 once:"
              f" {t3['recall']:.1%} recall ({t3['true_hits']}/{t3['paraphrases']}),"
              f" {t3['false_hits']}/{t3['near_misses']} false hits, UB {t3['ub']:.2%}:"
              " missed; test3 became development data. Round 5 (features of the aligned differing spans,"
              f" chosen on tune+dev+test1+test+test2+test3, logit >= {r5['threshold']}) scored test5 once:"
              f" {t5['recall']:.1%} recall ({t5['true_hits']}/{t5['paraphrases']}),"
              f" {t5['false_hits']}/{t5['near_misses']} false hits, UB {t5['ub']:.2%}: missed; test5 became"
              " development data. Round 6 (core/cache/slots.py's refusals, trivial edits, chosen on"
              f" tune+dev+test1+test+test2+test3+test5, logit >= {r6['threshold']}) scored test6 once:"
              f" {t6['recall']:.1%} recall ({t6['true_hits']}/{t6['paraphrases']}),"
              f" {t6['false_hits']}/{t6['near_misses']} false hits, UB {t6['ub']:.2%}: missed; test6 became"
              " development data. Round 7 (core/cache/roles.py's refusals, wider trivial edits, chosen on"
              f" tune+dev+test1+test+test2+test3+test5+test6, logit >= {r7['threshold']}) scored test7 once:"
              f" {t7['recall']:.1%} recall ({t7['true_hits']}/{t7['paraphrases']}),"
              f" {t7['false_hits']}/{t7['near_misses']} false hits, UB {t7['ub']:.2%}: missed; test7 became"
              " development data. Round 8 scores test8, written and committed before any round-8"
              " change.", "",
              f"Rule: highest recall on {'+'.join(rule['chosen_on'])} (pooled) with the false-hit"
              f" {rule['bound']} ({rule['confidence']:.0%}) <= {rule['choice_ub']:.2%}: the least strict"
              " development bound whose leave-one-split-out result keeps the UB <="
              f" {rule['max_loso_ub']:.1%} (a fifth of the target: held-out rates have run four to five"
              " times the leave-one-split-out ones)"
              " (" + "; ".join(f"{c['bound']:.2%}: {_fmt(c)}" for c in rule["calibration"]) + ")."
              f" {rule['held_out']} is scored once, at the chosen setting.", "",
              f"Second stage: candidates with cosine >= {al['min_cosine']} that pass the guard, are no"
              " swap (align.structure) and that core/cache/slots.py does not refuse; a trivial edit"
              f" (slots.trivial_edit) is a hit from cosine {al['trivial_min_cosine']} on; logit ="
              " " + " ".join(f"{w:+.3f}·{f}" for w, f in zip(al["weights"], al["features"], strict=False))
              + f" {al['weights'][-1]:+.3f} (fitted on the development candidates).", ""]
    for r, t in rep["choices"].items():
        lines.append(f"- {r}: {'threshold ' + str(t) if t is not None else 'no threshold qualifies'}")
    lines += ["", "Leave-one-split-out (fit and threshold on the other development splits, scored on the"
              " one left out; pooled over the folds):", "",
              "| rule | recall | false hits | false-hit 95% UB |", "|---|---:|---:|---:|"]
    for r, cv in rep["cross_validated"].items():
        lines.append(f"| {r} | {_fmt(cv['pooled'])} |")
    chosen = rep["chosen"]
    if chosen is None:
        return "\n".join(lines) + "\n"
    held = rule["held_out"]
    lines += ["", f"**Chosen: {chosen['rule']} at {chosen['threshold']}.**", "",
              "| split | recall | false hits | false-hit 95% UB |", "|---|---:|---:|---:|"]
    for s in (*SPLITS, "development"):
        lines.append(f"| {s} | {_fmt(rep['result'][s])} |")
    lines += ["", f"Target on {held} (recall >= {TARGET_RECALL:.0%}, UB <= {MAX_FALSE_HIT_UB:.0%}): "
              f"{'met' if rep['meets_target'] else 'NOT met'}.", ""]
    for r, rows in rep["table"].items():
        what = "logit" if r == ALIGN_RULE else "threshold"
        lines += [f"## {r}: by {what}", "",
                  f"| {what} | development recall | development false hits | development UB | {held} recall"
                  f" | {held} false hits | {held} UB |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            mark = " **←**" if r == chosen["rule"] and row["threshold"] == chosen["threshold"] else ""
            lines.append(f"| {row['threshold']:.2f}{mark} | {_fmt(row['development'])} | {_fmt(row[held])} |")
        lines.append("")
    lines += [f"({held} columns: reported only, never used to choose)", "",
              f"## By kind, {held}, {chosen['rule']} at {chosen['threshold']}", "",
              "| kind | label | pairs | hits |", "|---|---|---:|---:|"]
    for kind, k in rep["by_kind_held_out"].items():
        lines.append(f"| {kind[2:]} | {k['label']} | {k['pairs']} | {k['hits']} |")
    lines += ["", "Earlier pair sets at the chosen setting (not used to choose; their topics overlap every"
              " split):", "", "| set | recall | false hits | false-hit 95% UB |", "|---|---:|---:|---:|"]
    for name, r in rep.get("legacy", {}).items():
        lines.append(f"| `{name}` | {_fmt(r)} |")
    for s in SPLITS:
        fh = rep["listing"][s]["false_hits"]
        lines += ["", f"False hits, {s}:", ""]
        lines += [f"- cos {r['cosine']:.3f} [{r['topic']}/{r['kind']}] {r['a']!r} ~ {r['b']!r}"
                  for r in fh] or ["- none"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--development-only", action="store_true",
                        help=f"leave the held-out set ({HELD_OUT}) out: neither loaded nor scored")
    args = parser.parse_args()

    from core.embedder import Embedder

    embedder = Embedder.load(token_outputs=True, threads=args.threads)
    sets = {name: d for name, d in EXTRA_SETS.items() if not (args.development_only and name == HELD_OUT)}
    ev = Evaluation(load_pairs(), {name: load_pairs(d) for name, d in sets.items()}, embedder)
    rep = report(ev)
    one_thread = Embedder.load(token_outputs=True, threads=1)
    rep["encoder_ms_per_lookup"] = lookup_cost_ms(one_thread, ev.pairs)
    rep["stored_vectors"] = stored_vectors_cost(one_thread, ev.pairs)
    if rep["chosen"] is not None:
        rule, t = rep["chosen"]["rule"], rep["chosen"]["threshold"]
        rep["legacy"] = {str(path.relative_to(ROOT)): score_legacy(load_legacy(path), embedder, rule, t,
                                                                   ev.weights)
                         for path in LEGACY if path.is_file()}
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(rep)
    (args.out / "cache_eval.json").write_text(json.dumps(rep, indent=2, ensure_ascii=False) + "\n")
    (args.out / "cache_eval.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
