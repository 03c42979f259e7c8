"""Speculation under load: 16 concurrent streams through the engine, speculation on vs off
(same target, same prompts, one run). Updates `speedup_c16` in bench/results/speculative.json.

    python -m bench.speculative_c16
"""

from __future__ import annotations

import json
import time

import numpy as np

from core.build.artifacts import SERVED_VARIANT, build_llm
from core.llm.engine import EngineConfig, LLMEngine
from core.llm.sampling import SamplingParams
from core.llm.textgen import TextGenerator

from .common import RESULTS

TEXT = ("The museum opens at ten and closes at five. Tickets cost twelve euros, children enter "
        "free, and the guided tour starts every hour from the main hall. ")
ROUNDS = 5
PROMPTS = [f"Rewrite this notice for visitors, keeping every fact ({i}): " + TEXT if i % 2 else
           f"Question {i}: name something you can find in a museum and say why it matters."
           for i in range(16)]


def run(gen: TextGenerator, speculative: str | None, draft=None) -> tuple[float, int]:
    engine = LLMEngine(gen.runner, gen.chat, EngineConfig(max_running=16, max_seq_len=1024,
                                                          speculative=speculative,
                                                          prefix_cache_bytes=0), draft)
    prompts = [gen.chat.encode(gen.chat.chat_prompt([{"role": "user", "content": p}])) for p in PROMPTS]
    start = time.perf_counter()
    outs = engine.generate(prompts, SamplingParams(max_tokens=48, temperature=0, ignore_eos=True))
    return sum(o.n_tokens for o in outs) / (time.perf_counter() - start), sum(o.n_tokens for o in outs)


def main() -> None:
    model_dir = build_llm()
    rows = {}
    for target, mode, draft_variant in (("fp32", "ngram", None), ("fp32", "model", "q4"),
                                        ("q4", "ngram", None), (SERVED_VARIANT, "ngram", None)):
        gen = TextGenerator(model_dir, variant=target, threads=2, spinning=True)
        draft = TextGenerator(model_dir, variant=draft_variant, threads=2, spinning=True).runner \
            if draft_variant else None
        run(gen, None)  # warm-up: the first run pays page faults and the kernels' first calls
        offs, ons = [], []
        for _ in range(ROUNDS):  # interleaved: both see the same noise; runs are short
            offs.append(run(gen, None)[0])
            ons.append(run(gen, mode, draft)[0])
        off, on = float(np.median(offs)), float(np.median(ons))
        rows[f"{target} + {mode}{' ' + draft_variant if draft_variant else ''}"] = {
            "tok_s_off": round(off, 1), "tok_s_on": round(on, 1), "ratio": round(on / off, 3)}
        print(rows)
    path = RESULTS / "speculative.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data["c16"] = rows
    data["speedup_c16"] = min(r["ratio"] for r in rows.values())
    path.write_text(json.dumps(data, indent=1))
    md = RESULTS / "speculative.md"
    lines = ["", "Under 16 concurrent streams (engine, speculation on vs off, tok/s in total, medians of "
             f"{ROUNDS} interleaved runs):", "",
             "| pair | off | on | ratio |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['tok_s_off']} | {v['tok_s_on']} | {v['ratio']}x |" for k, v in rows.items()]
    text = md.read_text() if md.exists() else ""
    text = text.split("\nUnder 16 concurrent streams")[0].rstrip() + "\n" + "\n".join(lines) + "\n"
    md.write_text(text)
    # Also on its own: bench.speculative rewrites speculative.{json,md} when it runs again.
    (RESULTS / "speculative_c16.json").write_text(json.dumps({"c16": rows, "speedup_c16":
                                                              data["speedup_c16"]}, indent=1))
    (RESULTS / "speculative_c16.md").write_text("\n".join(lines).strip() + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
