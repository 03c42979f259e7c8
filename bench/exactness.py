"""Is the served variant's greedy output the same alone, in a batch of 16, and with speculation?
Counts over prompts nobody selected: the quality gate's questions (core/quant/data/tasks.jsonl)
as they are, and the same questions asked to be repeated before the answer (there prompt lookup
drafts). Engine only, the real model:

- alone: one request at a time, no speculation, no prefix cache: the reference;
- batch of 16: the served engine settings (configs/local.yaml: prefix cache on) without
  speculation, 16 requests decoding together;
- speculation: the served engine settings (prompt lookup, adaptive k), one request at a time
  (speculation runs while at most `spec_max_batch` decode).

    python -m bench.exactness     # bench/results/exactness.{json,md}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.build.artifacts import SERVED_VARIANT, build_llm
from core.llm.engine import EngineConfig, LLMEngine
from core.llm.sampling import SamplingParams
from core.llm.textgen import TextGenerator

from .common import markdown_table, write
from .peer import served_args

TASKS = Path(__file__).parents[1] / "core" / "quant" / "data" / "tasks.jsonl"
BATCH = 16


def prompts(n: int) -> list[str]:
    questions = [json.loads(line)["question"] for line in TASKS.read_text().splitlines()[:n]]
    return questions + [f"Repeat this question word for word, then answer it: {q}" for q in questions]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    gen = TextGenerator(build_llm(), variant=SERVED_VARIANT, threads=2, spinning=True)
    chat = gen.chat
    ids = [chat.encode(chat.chat_prompt([{"role": "user", "content": p}])) for p in prompts(args.questions)]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0)
    served = EngineConfig(**served_args().get("engine", {}))

    def engine(config: EngineConfig) -> LLMEngine:
        return LLMEngine(gen.runner, chat, config)

    plain = engine(EngineConfig(max_running=BATCH, speculative=None, prefix_cache_bytes=0))
    alone = [plain.generate([p], params)[0].text for p in ids]
    batched_engine = engine(served.model_copy(update={"speculative": None, "max_running": BATCH}))
    batched = [o.text for i in range(0, len(ids), BATCH)
               for o in batched_engine.generate(ids[i:i + BATCH], params)]
    spec_engine = engine(served)
    speculative = [spec_engine.generate([p], params)[0].text for p in ids]
    stats = spec_engine.stats().speculative
    n = len(ids)
    same_batch = sum(a == b for a, b in zip(alone, batched, strict=True))
    same_spec = sum(a == b for a, b in zip(alone, speculative, strict=True))
    result = {"variant": SERVED_VARIANT, "prompts": n, "max_tokens": args.max_tokens,
              "identical_in_batch_of_16": same_batch, "identical_with_speculation": same_spec,
              "speculation": {"target_steps": stats.steps, "steps_with_drafts": stats.drafts,
                              "draft_tokens": stats.draft_tokens, "accepted_tokens": stats.accepted_tokens}}
    table = markdown_table(
        ["served variant", "prompts", "identical to alone: batch of 16", "identical to alone: speculation",
         "steps with drafts", "draft tokens accepted"],
        [[SERVED_VARIANT, n, f"{same_batch}/{n}", f"{same_spec}/{n}", f"{stats.drafts}/{stats.steps}",
          f"{stats.accepted_tokens}/{stats.draft_tokens}"]])
    table += (f"\nGreedy, at most {args.max_tokens} new tokens; {args.questions} questions of the "
              "quality gate's set as they are and asked to be repeated first. Alone: one request "
              "at a time, no speculation, no prefix cache; batch of 16: the served engine settings without "
              "speculation; speculation: the served engine settings (prompt lookup), one at a time.\n")
    write("exactness", result, table)
    print(table)


if __name__ == "__main__":
    main()
