"""The quality gate's pure parts: the paired test, the answer checker, the task set, the chooser's refusal."""

from __future__ import annotations

import numpy as np
import pytest

from core.quant.checker import is_correct, normalise
from core.quant.chooser import Budget, choose
from core.quant.paired import bootstrap_diff_ci, mcnemar_exact, paired_vs_fp32
from core.quant.quality import load_jsonl
from core.quant.report import paired_table


@pytest.mark.parametrize(("b", "c", "p"), [
    # two-sided exact binomial p at 1/2, by hand: 2 * sum_{k<=min} C(n, k) / 2^n
    (1, 9, 2 * (1 + 10) / 1024),        # 0.021484375 (scipy.stats.binomtest(1, 10).pvalue)
    (2, 8, 2 * (1 + 10 + 45) / 1024),   # 0.109375
    (0, 6, 2 / 64),                     # 0.03125
    (0, 5, 2 / 32),                     # 0.0625: five one-way flips are not enough
    (5, 5, 1.0), (0, 0, 1.0), (7, 3, 2 * (1 + 10 + 45 + 120) / 1024),
])
def test_mcnemar_exact_matches_hand_computed_binomial(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p)
    assert mcnemar_exact(c, b) == pytest.approx(p)  # two-sided: symmetric


def test_bootstrap_interval_brackets_the_difference_and_is_reproducible():
    rng = np.random.default_rng(1)
    ref = rng.random(300) < 0.6
    var = ref.copy()
    var[:30] = ~var[:30]
    lo, hi = bootstrap_diff_ci(ref, var)
    diff = var.mean() - ref.mean()
    assert lo <= diff <= hi and hi - lo < 0.1
    assert bootstrap_diff_ci(ref, var) == (lo, hi)  # fixed seed
    assert bootstrap_diff_ci(ref, ref) == (0.0, 0.0)


def test_paired_rule_needs_significance_and_fp32_ahead():
    ref = [True] * 100 + [False] * 100
    worse = [False] * 12 + [True] * 88 + [False] * 100  # b=12, c=0
    row = paired_vs_fp32(ref, worse)
    assert row["discordant"] == [12, 0] and row["significantly_worse"]
    assert row["mcnemar_p"] < 0.001 and row["acc_diff_ci"][1] < 0
    better = paired_vs_fp32(worse, ref)  # the same flips the other way round
    assert better["discordant"] == [0, 12] and not better["significantly_worse"]
    noisy = [not x if i in (0, 1, 2, 150, 151) else x for i, x in enumerate(ref)]  # b=3, c=2
    assert not paired_vs_fp32(ref, noisy)["significantly_worse"]


def _row(name: str, ms: float, ref: list[bool], var: list[bool]) -> dict:
    return {"name": name, "device": "any", "decode_ms_per_token": ms, "ppl_ratio": 1.001,
            "top1_agreement": 0.99, "task_accuracy": float(np.mean(var)), "answers_identical": "1/1",
            **paired_vs_fp32(ref, var)}


def test_chooser_never_picks_a_significantly_worse_variant():
    ref = [True] * 20 + [False] * 20
    rows = [_row("fp32", 33.0, ref, ref),
            _row("fast-but-worse", 10.0, ref, [False] * 8 + [True] * 12 + [False] * 20),  # b=8, c=0
            _row("slower-ok", 20.0, ref, [False] * 2 + [True] * 18 + [True] * 1 + [False] * 19)]
    choice = choose(rows, Budget(target_latency_ms=30, max_ppl_increase=0.02))
    assert choice.pick == "slower-ok"
    assert "significantly worse" in choice.verdicts["fast-but-worse"]
    # with no other variant in budget, the fallback is the quality-safe one, never the worse one
    choice = choose(rows[:2], Budget(target_latency_ms=5, max_ppl_increase=0.02))
    assert choice.pick == "fp32" and not choice.meets_both
    table = paired_table(rows)
    assert "**significantly worse**" in table.splitlines()[3] and "reference" in table.splitlines()[2]


@pytest.mark.parametrize(("text", "answers", "ok"), [
    ("The capital of France is Paris.", ["Paris"], True),
    ("Parisian food is great", ["Paris"], False),           # whole words only
    ("\n\nParis", ["Paris"], True),                          # first non-empty line
    ("Line one\nParis", ["Paris"], False),                   # only that line counts
    ("There are twenty-six letters.", ["26"], True),         # number words
    ("Twelve.", ["12"], True),
    ("A kilogram has 1,000 grams.", ["1000"], True),         # thousands comma
    ("It is 4.5", ["4"], False), ("It is 4.", ["4"], True),  # decimals are not a full stop
    ("It's Brasília.", ["Brasilia"], True),                  # accents
    ("The answer is 12", ["120"], False), ("It was in 1945.", ["1945"], True),
    ("The formula is H₂O.", ["H2O"], True),                  # NFKD subscripts
    ("I don't know", ["t"], False),                          # apostrophes are not word breaks
    ("The first letter is 'Z'.", ["Z"], True),
    ("Neil Armstrong", ["Armstrong"], True), ("It weighs the same", ["same", "neither"], True),
])
def test_checker_on_tricky_answers(text, answers, ok):
    assert is_correct(text, answers) is ok


def test_normalise_is_applied_to_both_sides():
    assert normalise("One thousand") == normalise("one thousand") == "1 thousand"
    assert normalise("twenty six") == normalise("Twenty-six") == "26"


def test_task_set_is_large_unique_and_never_answers_itself():
    tasks = load_jsonl("tasks.jsonl")
    assert len(tasks) >= 200
    assert len({t["question"] for t in tasks}) == len(tasks) == len({t["id"] for t in tasks})
    for t in tasks:
        assert t["answers"] and all(normalise(a) for a in t["answers"]), t
        assert not is_correct(t["question"], t["answers"]), t  # restating the question never scores
