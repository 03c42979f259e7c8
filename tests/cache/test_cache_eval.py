"""The semantic-cache evaluation: pair files, topic splits, the bound, and the served default."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from bench import cache_eval as ce
from core.cache import align
from core.cache.config import DEFAULT_GUARD, DEFAULT_RESCORE, DEFAULT_THRESHOLD, CacheConfig

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "cache_eval.json"


@pytest.fixture(scope="module")
def pairs() -> list[ce.Pair]:
    return ce.load_pairs()


@pytest.fixture(scope="module")
def test_pairs() -> list[ce.Pair]:
    return ce.load_pairs(ce.TEST_DIR)


@pytest.fixture(scope="module")
def test2_pairs() -> list[ce.Pair]:
    return ce.load_pairs(ce.TEST2_DIR)


@pytest.fixture(scope="module")
def test3_pairs() -> list[ce.Pair]:
    return ce.load_pairs(ce.TEST3_DIR)


@pytest.fixture(scope="module")
def test5_pairs() -> list[ce.Pair]:
    return ce.load_pairs(ce.TEST5_DIR)


@pytest.fixture(scope="module")
def test6_pairs() -> list[ce.Pair]:
    return ce.load_pairs(ce.TEST6_DIR)


@pytest.fixture(scope="module")
def test7_pairs() -> list[ce.Pair]:
    return ce.load_pairs(ce.TEST7_DIR)


@pytest.fixture(scope="module")
def test8_pairs() -> list[ce.Pair]:
    return ce.load_pairs(ce.TEST8_DIR)


def test_pair_set_is_large_and_varied(pairs, test_pairs):
    everything = pairs + test_pairs
    assert len(everything) >= 1500
    assert len({(p.a, p.b) for p in everything}) == len(everything)
    labels = Counter(p.same for p in everything)
    assert labels[True] >= 700 and labels[False] >= 700
    assert len({p.topic for p in everything}) >= 60
    assert len({p.kind for p in everything if p.same}) >= 10
    assert len({p.kind for p in everything if not p.same}) >= 10


@pytest.mark.parametrize("name", ["test2", "test3", "test5", "test6", "test7", "test8"])
def test_later_sets_are_large_and_new(name, pairs, test_pairs, test2_pairs, test3_pairs, test5_pairs,
                                      test6_pairs, test7_pairs, test8_pairs):
    sets = {"test": test_pairs, "test2": test2_pairs, "test3": test3_pairs, "test5": test5_pairs,
            "test6": test6_pairs, "test7": test7_pairs, "test8": test8_pairs}
    new = sets[name]
    assert len(new) >= 800 and sum(not p.same for p in new) >= 480
    earlier = pairs + [p for s in list(sets)[: list(sets).index(name)] for p in sets[s]]
    assert not {p.topic for p in new} & {p.topic for p in earlier}
    seen = {frozenset((p.a.lower(), p.b.lower())) for p in earlier}
    assert not [p for p in new if frozenset((p.a.lower(), p.b.lower())) in seen]
    assert len({frozenset((p.a, p.b)) for p in new}) == len(new)
    # one false hit in its near misses still bounds the rate under 1 %
    assert ce.clopper_pearson_upper(1, sum(not p.same for p in new)) <= ce.MAX_FALSE_HIT_UB


def test_splits_are_topic_disjoint(pairs, test_pairs, test2_pairs, test3_pairs, test5_pairs, test6_pairs,
                                   test7_pairs, test8_pairs):
    split_of = ce.assign_splits(pairs, test_pairs, test2_pairs, test3_pairs, test5_pairs, test6_pairs,
                                test7_pairs, test8_pairs)
    everything = (pairs + test_pairs + test2_pairs + test3_pairs + test5_pairs + test6_pairs + test7_pairs
                  + test8_pairs)
    topics = {s: {p.topic for p in everything if split_of[p.topic] == s} for s in ce.SPLITS}
    for i, a in enumerate(ce.SPLITS):
        for b in ce.SPLITS[i + 1:]:
            assert not topics[a] & topics[b], (a, b)
    assert topics["test"] == {p.topic for p in test_pairs}
    assert topics["test2"] == {p.topic for p in test2_pairs}
    assert topics["test3"] == {p.topic for p in test3_pairs}
    assert topics["test5"] == {p.topic for p in test5_pairs}
    assert topics["test6"] == {p.topic for p in test6_pairs}
    assert topics["test7"] == {p.topic for p in test7_pairs}
    assert topics["test8"] == {p.topic for p in test8_pairs}
    # each split holds both labels; development splits roughly their share
    for s in ce.SPLITS:
        members = [p for p in everything if split_of[p.topic] == s]
        assert {p.same for p in members} == {True, False}
        if s in ce.SPLIT_SHARES:
            assert abs(len(members) / len(pairs) - ce.SPLIT_SHARES[s]) < 0.05
    # no prompt of a test pair appears in a development pair
    seen = {t for p in pairs for t in (p.a, p.b)}
    assert not {t for p in test_pairs for t in (p.a, p.b)} & seen
    # the near misses of the test split can bound a false-hit rate under 1 % with one false hit
    assert ce.clopper_pearson_upper(1, sum(not p.same for p in test_pairs)) <= ce.MAX_FALSE_HIT_UB


def test_split_depends_on_topics_only(pairs):
    shuffled = pairs[:]
    random.Random(0).shuffle(shuffled)
    assert ce.assign_splits(shuffled) == ce.assign_splits(pairs)


def test_a_test_topic_in_development_is_refused(pairs):
    leaked = [ce.Pair(pairs[0].topic, True, "reword", "x?", "y?")]
    with pytest.raises(ValueError, match="another split"):
        ce.assign_splits(pairs, leaked)


def test_load_pairs_rejects_malformed_lines(tmp_path):
    (tmp_path / "x.txt").write_text("## t\n= kind | only one prompt\n")
    with pytest.raises(ValueError, match="x.txt:2"):
        ce.load_pairs(tmp_path)
    (tmp_path / "x.txt").write_text("= kind | a | b\n")  # no topic header
    with pytest.raises(ValueError):
        ce.load_pairs(tmp_path)


def test_clopper_pearson_upper_bound():
    # no events: the bound has the closed form 1 - alpha^(1/n) (the "rule of three" ~ 3/n)
    for n in (10, 299, 564):
        assert ce.clopper_pearson_upper(0, n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-9)
    # 3 events in 100: 0.0757 (R: binom.test(3, 100, alternative = "less")$conf.int[2])
    assert ce.clopper_pearson_upper(3, 100) == pytest.approx(0.07571, abs=5e-5)
    # the bound is the p at which P(X <= k) = 5 %
    k, n = 1, 473
    p = ce.clopper_pearson_upper(k, n)
    assert sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1)) == pytest.approx(0.05)
    assert ce.clopper_pearson_upper(5, 5) == 1.0


def test_served_default_is_the_evaluated_choice(pairs, test_pairs, test2_pairs, test3_pairs, test5_pairs,
                                                test6_pairs, test7_pairs, test8_pairs):
    """config.py's and align.py's defaults must be what bench/cache_eval.py chose on the
    development splits."""
    report = json.loads(RESULTS.read_text())
    total = (len(pairs) + len(test_pairs) + len(test2_pairs) + len(test3_pairs) + len(test5_pairs)
             + len(test6_pairs) + len(test7_pairs) + len(test8_pairs))
    assert sum(v["pairs"] for v in report["splits"].values()) == total, "pairs changed: rerun cache_eval"
    chosen = report["chosen"]
    assert chosen["rule"] == ce.ALIGN_RULE and chosen["rescore"] is DEFAULT_RESCORE
    assert chosen["guard"] is DEFAULT_GUARD
    assert chosen["threshold"] == align.THRESHOLD
    assert report["align"]["weights"] == list(align.WEIGHTS)
    assert report["align"]["min_cosine"] == align.MIN_COSINE == DEFAULT_THRESHOLD
    config = CacheConfig(data_dir=Path("/tmp/unused"))
    served = (config.threshold, config.guard, config.rescore)
    assert served == (DEFAULT_THRESHOLD, DEFAULT_GUARD, DEFAULT_RESCORE)
    # the choice was made on the development splits, within the bound
    assert report["rule"]["chosen_on"] == list(ce.DEVELOPMENT) and ce.HELD_OUT not in ce.DEVELOPMENT
    assert report["rule"]["held_out"] == ce.HELD_OUT == "test8" and "test7" in ce.DEVELOPMENT
    # every split is reported on its own, the held-out one included
    assert set(report["result"]) == {*ce.SPLITS, "development"}
    assert report["result"]["development"]["false_hit_ub"] <= ce.MAX_FALSE_HIT_UB
