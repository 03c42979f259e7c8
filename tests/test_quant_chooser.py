"""The optimizer's decision and its outputs, as pure logic over hand-made rows (no models)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from core.optimize import parse_args
from core.quant.checker import is_correct
from core.quant.chooser import Budget, choose, excess, parse_fraction
from core.quant.quality import embedder_quality, prefix_agreement
from core.quant.report import REPO, table, write_config


def row(name: str, ms: float, ppl: float, device: str = "any", task: float = 1.0, top1: float = 0.99,
        bits: int = 4) -> dict:
    return {"name": name, "bits": bits, "technique": f"{name} technique", "device": device,
            "bytes": 1e8, "decode_ms_per_token": ms, "decode_tok_s_b1": round(1000 / ms, 1),
            "prefill_ms_128": 10 * ms, "decode_tok_s_b8": 100.0, "ppl_ratio": ppl, "kl": 0.01,
            "top1_agreement": top1, "greedy_agreement": 0.5, "greedy_identical": "1/8",
            "task_accuracy": task, "threads": 2, "spinning": False, "peak_rss_mb": 400.0}


BASE = row("fp32", 33.0, 1.0, bits=32)
BUDGET = Budget(target_latency_ms=30, max_ppl_increase=0.02)


def test_parse_fraction_takes_percent_or_fraction():
    assert parse_fraction("2%") == pytest.approx(0.02)
    assert parse_fraction("0.02") == pytest.approx(0.02)
    with pytest.raises(ValueError):
        parse_fraction("-5%")


def test_cli_parses_the_documented_command():
    args = parse_args(["--target-latency-ms", "30", "--max-ppl-increase", "2%"])
    assert args.target_latency_ms == 30 and args.max_ppl_increase == pytest.approx(0.02)
    assert "q4" in args.candidates.split(",")


def test_picks_fastest_within_quality_budget():
    rows = [BASE, row("q4", 12.0, 1.004), row("rtn", 9.0, 1.30), row("w8", 20.0, 1.001)]
    choice = choose(rows, BUDGET)
    assert choice.meets_both and choice.pick == "q4" and choice.closest is None
    assert "ppl" in choice.verdicts["rtn"] and choice.verdicts["w8"] == "ok"
    assert "ms" in choice.verdicts["fp32"]  # 33 ms misses the 30 ms target


def test_near_ties_go_to_the_better_perplexity():
    rows = [BASE, row("q4", 12.0, 1.004), row("q4-acc0", 12.2, 1.0001)]
    choice = choose(rows, BUDGET)
    assert choice.pick == "q4-acc0"  # 1.7% slower: inside the 3% tie band
    assert "q4 measured 1.7% faster" in choice.message
    assert choose(rows, Budget(30, 0.02, tie_tolerance=0.0)).pick == "q4"


def test_gpu_variants_are_not_cpu_picks():
    rows = [BASE, row("fp16", 5.0, 1.0, device="gpu", bits=16), row("q4", 12.0, 1.004)]
    choice = choose(rows, BUDGET)
    assert choice.pick == "q4" and "gpu" in choice.verdicts["fp16"]
    assert choose(rows, BUDGET, device="gpu").pick == "fp16"


def test_optional_floors_exclude_variants():
    rows = [BASE, row("q4", 12.0, 1.004, task=0.90), row("w8", 20.0, 1.001, task=0.97)]
    assert choose(rows, Budget(30, 0.02, min_task_accuracy=0.95)).pick == "w8"
    assert choose(rows, Budget(30, 0.02, min_top1=0.995)).meets_both is False


def test_none_meets_both_names_closest_and_serves_quality_safe_fastest():
    rows = [BASE, row("q4", 12.0, 1.05), row("w8", 20.0, 1.001)]
    choice = choose(rows, Budget(target_latency_ms=10, max_ppl_increase=0.02))
    assert not choice.meets_both
    assert choice.closest == "q4"  # 20% over on latency and 3% over on ppl beats w8's 100% over
    assert choice.pick == "w8"  # never ship a variant over the quality budget
    assert "NO variant" in choice.message and "q4" in choice.message


def test_excess_is_zero_only_when_both_limits_hold():
    assert excess(row("a", 30.0, 1.02), BUDGET) == 0
    assert excess(row("b", 60.0, 1.02), BUDGET) == pytest.approx(1.0)
    assert excess(row("c", 30.0, 1.0404), BUDGET) == pytest.approx(0.02)


def test_nothing_eligible_picks_nothing():
    choice = choose([row("fp16", 5.0, 1.0, device="gpu")], BUDGET)
    assert choice.pick is None and not choice.meets_both


def test_written_config_is_local_yaml_with_the_pick(tmp_path):
    from serve_app.app import build_app

    out = tmp_path / "optimized.yaml"
    write_config("q4-acc0", BUDGET, row("q4-acc0", 12.0, 1.0), REPO / "configs" / "local.yaml", out)
    written, base = yaml.safe_load(out.read_text()), yaml.safe_load((REPO / "configs/local.yaml").read_text())
    app = written["applications"][0]
    assert app["import_path"] == "serve_app.app:build_app" and app["args"]["llm_variant"] == "q4-acc0"
    app["args"]["llm_variant"] = base["applications"][0]["args"]["llm_variant"]
    assert written == base  # nothing else changed
    # the app's own graph builder accepts the written args (binding starts no Ray)
    assert build_app(yaml.safe_load(out.read_text())["applications"][0]["args"]) is not None


def test_report_table_marks_the_pick():
    rows = [BASE, row("q4", 12.0, 1.004)]
    text = table(rows, choose(rows, BUDGET))
    assert "**PICK**" in text.splitlines()[3] and text.count("\n") == 4


def test_answer_matching_and_agreement():
    assert is_correct("The capital of France is Paris.", ["Paris"])
    assert not is_correct("Parisian food is great", ["Paris"])
    assert not is_correct("Line one\nParis", ["Paris"])  # only the first line counts
    assert prefix_agreement([1, 2, 3, 4], [1, 2, 9, 4], n=4) == 0.5


def test_embedder_quality_of_identical_and_perturbed_vectors():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(20, 8))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    same = embedder_quality(v, v)
    assert same["cosine_min"] == pytest.approx(1.0) and same["nn1_same"] == 1.0
    w = v + rng.normal(scale=0.5, size=v.shape)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    assert embedder_quality(v, w)["cosine_mean"] < 0.99
