"""Structured output benchmark (issue 14): the per-token cost of grammar-constrained decoding at
batch 1 and 16 against the same engine decoding freely, and the schema-validity rate.

    python -m bench.structured            # writes bench/results/structured.{json,md}
    python -m bench.structured --quick    # a smoke run: fewer rounds and tokens

The engine runs in this process (no HTTP): what is measured is the engine's decode step, whose
time per emitted token is summed from the engine's own step stats. Constrained and free runs
alternate round by round, so load from other processes hits both alike. Constrained rows use a
JSON schema; free rows the same prompts. Validity: every constrained answer that finished with
"stop" must parse and validate (target 100%); "length" answers are counted apart.
"""

from __future__ import annotations

import argparse
import json
import time

import jsonschema
import numpy as np

from core.build.artifacts import SERVED_VARIANT
from core.llm.constraint import json_schema_grammar
from core.llm.engine import EngineConfig, LLMEngine
from core.llm.engine.engine import StepStats
from core.llm.sampling import SamplingParams, process_logits
from core.llm.textgen import TextGenerator
from deployments.models import built_variant_dir

from .common import machine, markdown_table, write

SCHEMA = {"type": "object", "additionalProperties": False,
          "required": ["name", "country", "population", "landmarks"],
          "properties": {"name": {"type": "string"}, "country": {"type": "string"},
                         "population": {"type": "integer"},
                         "landmarks": {"type": "array", "items": {"type": "string"}, "maxItems": 3}}}
CITIES = ["Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Delhi", "Rome", "Sydney", "Toronto", "Nairobi",
          "Madrid", "Seoul", "Berlin", "Bogota", "Hanoi", "Dublin"]


def prompt(city: str) -> str:
    return f"Describe {city} as JSON with keys name, country, population and landmarks."


def run(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> tuple[list, float, int]:
    """Outputs, decode seconds, decode tokens, summed over the decode steps with every row still
    running (constrained answers finish early; a shrinking batch costs more per token)."""
    steps: list[StepStats] = []
    engine.on_step = steps.append
    outs = engine.generate(prompts, params)
    decode = [s for s in steps if s.kind == "decode" and s.batch_size == len(prompts)]
    return outs, sum(s.seconds for s in decode), sum(s.tokens for s in decode)


def constraint_work_us(engine: LLMEngine, grammar: str, texts: list[str]) -> float:
    """Median CPU time per token of the constraint itself (mask, then applying it to a row of
    logits), replaying finished answers: a figure that is less at the mercy of other processes
    than a step time on a shared machine."""
    logits = np.random.default_rng(0).normal(size=engine.chat.tokenizer.get_vocab_size()).astype(np.float32)
    params = SamplingParams(temperature=0.7, grammar=grammar)
    times = []
    for text in texts:
        constraint = engine.grammar_tokenizer.matcher(grammar)
        for token in engine.chat.encode(text):
            start = time.perf_counter()
            process_logits(logits, params, {}, constraint.allowed())
            times.append(time.perf_counter() - start)
            try:
                constraint.advance(token)
            except RuntimeError:  # re-tokenised text may differ from what was generated
                break
    return float(np.median(times) * 1e6) if times else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default=SERVED_VARIANT)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.max_tokens = 1, 48
    gen = TextGenerator(built_variant_dir(args.variant), variant=args.variant, threads=args.threads)
    engine = LLMEngine(gen.runner, gen.chat, EngineConfig(max_seq_len=1024, prefix_cache_bytes=0))
    ids = {c: gen.chat.encode(gen.chat.chat_prompt([{"role": "user", "content": prompt(c)}]))
           for c in CITIES}
    grammar = json_schema_grammar(SCHEMA)
    start = time.perf_counter()
    engine.grammar_tokenizer  # noqa: B018 - built once, outside the timings
    tokenizer_s = time.perf_counter() - start
    totals = {(b, c): [0.0, 0] for b in (1, 16) for c in ("free", "constrained")}
    valid = invalid = length = 0
    answers: list[str] = []
    for r in range(args.rounds):
        for batch in (1, 16):
            cities = CITIES[:batch] if batch > 1 else [CITIES[r % len(CITIES)]]
            prompts = [ids[c] for c in cities]
            for kind in ("free", "constrained"):
                # Free rows generate as many tokens as asked (ignore_eos): same lengths per step.
                params = (SamplingParams(max_tokens=args.max_tokens, temperature=0.7, seed=r,
                                         grammar=grammar) if kind == "constrained" else
                          SamplingParams(max_tokens=args.max_tokens, temperature=0.7, seed=r,
                                         ignore_eos=True))
                outs, seconds, tokens = run(engine, prompts, params)
                totals[(batch, kind)][0] += seconds
                totals[(batch, kind)][1] += tokens
                if kind == "constrained":
                    for out in outs:
                        if out.finish_reason != "stop":
                            length += 1
                            continue
                        try:
                            jsonschema.validate(json.loads(out.text), SCHEMA)
                            valid += 1
                            answers.append(out.text)
                        except (ValueError, jsonschema.ValidationError):
                            invalid += 1
    rows, results = [], {}
    for batch in (1, 16):
        ms = {k: 1000 * totals[(batch, k)][0] / max(totals[(batch, k)][1], 1)
              for k in ("free", "constrained")}
        overhead = 100 * (ms["constrained"] / ms["free"] - 1)
        results[f"batch_{batch}"] = {"ms_per_token_free": round(ms["free"], 3),
                                     "ms_per_token_constrained": round(ms["constrained"], 3),
                                     "overhead_pct": round(overhead, 1),
                                     "tokens_free": totals[(batch, "free")][1],
                                     "tokens_constrained": totals[(batch, "constrained")][1]}
        rows.append([batch, f"{ms['free']:.3f}", f"{ms['constrained']:.3f}", f"{overhead:+.1f}%"])
    finished = valid + invalid
    results["validity"] = {"valid": valid, "invalid": invalid, "length": length,
                           "valid_pct_of_stop": round(100 * valid / finished, 1) if finished else None}
    results["grammar_tokenizer_s"] = round(tokenizer_s, 2)
    work = constraint_work_us(engine, grammar, answers)
    results["constraint_us_per_token"] = round(work, 1)
    table = ("# Structured output: cost of the constraint (engine decode, ms per token)\n\n"
             f"{args.rounds} round(s), max_tokens {args.max_tokens}, {args.variant}, "
             f"{args.threads or 'default'} threads{' (--quick: a smoke run)' if args.quick else ''}. "
             "Step times on a shared machine are noise; the constraint's own work below is the "
             "steadier figure.\n\n"
             + markdown_table(["batch", "free", "constrained", "overhead"], rows)
             + f"\nValid JSON (of answers that finished with stop): {valid}/{finished}; "
               f"hit max_tokens: {length}. Grammar tokenizer built once in {tokenizer_s:.2f} s. "
               f"The constraint's own work per token and row (mask + applying it): {work:.0f} us "
               "median (it runs beside the model's forward).\n")
    write("structured", {"machine": machine(), "args": vars(args), "results": results}, table)


if __name__ == "__main__":
    main()
