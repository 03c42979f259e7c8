"""Measure LM variants against fp32: build what is missing, then quality and speed side by side.

One function serves the benchmark (bench/quantization.py) and the optimizer, so both report the
same numbers the same way.
"""

from __future__ import annotations

from pathlib import Path

from ..llm.chat_tokenizer import ChatTokenizer
from .quality import LMReference, answer_all, load_jsonl, task_metrics
from .speed import load_runner, measure_speed, peak_rss_mb
from .variants import ensure_variant, spec


def evaluate_lm(model_dir: Path, names: list[str], threads: int = 2, spinning: bool = False,
                repeats: int = 3, decode_steps: int = 32, rss: bool = True, progress: bool = True,
                max_questions: int | None = None) -> list[dict]:
    """One row per variant (fp32 first, always measured: every ratio is against this run's fp32)."""
    from tqdm import tqdm

    names = ["fp32"] + [n for n in dict.fromkeys(names) if n != "fp32"]
    paths = {n: ensure_variant(model_dir, n, progress) for n in names}
    chat = ChatTokenizer(model_dir)
    runners = {n: load_runner(model_dir, n, threads, spinning) for n in names}
    ref = LMReference.compute(runners["fp32"], chat, max_questions=max_questions)
    quality = {}
    for n in tqdm(names, desc="quality vs fp32", unit="variant", disable=not progress):
        quality[n] = ref.compare(runners[n], chat)
    speed = measure_speed(runners, repeats, decode_steps, progress)
    del runners  # free ~3 GB of sessions before the RSS children start
    rows = []
    base = speed["fp32"]
    for n in names:
        s = spec(n)
        row = {"name": n, "bits": s.bits, "technique": s.technique, "device": s.device,
               "bytes": paths[n].stat().st_size, **speed[n],
               "decode_speedup_vs_fp32": round(speed[n]["decode_tok_s_b1"] / base["decode_tok_s_b1"], 2),
               "prefill_ratio_vs_fp32": round(speed[n]["prefill_ms_128"] / base["prefill_ms_128"], 2),
               **quality[n], "threads": threads, "spinning": spinning}
        if rss:
            row["peak_rss_mb"] = peak_rss_mb(model_dir, n, threads)
        rows.append(row)
    return rows


def evaluate_tasks(model_dir: Path, names: list[str], threads: int = 2, progress: bool = True,
                   max_questions: int | None = None) -> list[dict]:
    """The task-set part of evaluate_lm alone (no timing, no perplexity): one row per variant, fp32 first."""
    from tqdm import tqdm

    names = ["fp32"] + [n for n in dict.fromkeys(names) if n != "fp32"]
    chat = ChatTokenizer(model_dir)
    questions = load_jsonl("tasks.jsonl")[:max_questions]
    answers = {}
    for n in tqdm(names, desc="task set", unit="variant", disable=not progress):
        ensure_variant(model_dir, n, progress)
        answers[n] = answer_all(load_runner(model_dir, n, threads), chat, questions)
    ref_ids, ref_correct = answers["fp32"]
    return [{"name": n, "technique": spec(n).technique, "questions": len(questions),
             **task_metrics(ref_ids, ref_correct, *answers[n])} for n in names]
