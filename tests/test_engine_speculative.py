"""Speculative decoding inside the continuous-batching engine (the real fp32 target)."""

from __future__ import annotations

import pytest

from core.llm.engine import EngineConfig, LLMEngine
from core.llm.sampling import SamplingParams

TEXT = ("Our store opens at nine in the morning and closes at six in the evening. Returns are "
        "accepted within thirty days with a receipt. ")
PROMPTS = ["Repeat this text exactly: " + TEXT * 2, "What is the capital of France?",
           "Summarise in one sentence: " + TEXT, "Name three colours."]
GREEDY = SamplingParams(max_tokens=40, temperature=0)


def ids(gen, text: str) -> list[int]:
    return gen.chat.encode(gen.chat.chat_prompt([{"role": "user", "content": text}]))


@pytest.fixture(scope="module")
def reference(fp32_generator):
    return [fp32_generator.complete(ids(fp32_generator, p), GREEDY).text for p in PROMPTS]


@pytest.mark.parametrize("mode", ["ngram", "model"])
def test_speculative_greedy_equals_the_target_alone(fp32_generator, generator, reference, mode):
    engine = LLMEngine(fp32_generator.runner, fp32_generator.chat,
                       EngineConfig(max_seq_len=1024, speculative=mode, prefix_cache_bytes=0),
                       draft=generator.runner if mode == "model" else None)
    outs = [engine.generate([ids(fp32_generator, p)], GREEDY)[0].text for p in PROMPTS]
    assert outs == reference
    stats = engine.spec.stats
    assert stats.drafts > 0 and stats.accepted_tokens > 0
    assert stats.emitted_tokens > stats.steps  # more than one token per target forward


def test_speculation_switches_off_for_a_large_batch(fp32_generator, reference):
    engine = LLMEngine(fp32_generator.runner, fp32_generator.chat,
                       EngineConfig(max_seq_len=1024, speculative="ngram", spec_max_batch=1,
                                    prefix_cache_bytes=0))
    outs = engine.generate([ids(fp32_generator, p) for p in PROMPTS], GREEDY)
    assert [o.text for o in outs] == reference
    # steps with several sequences decoding took the batched path: only the tail ran alone
    assert engine.spec.stats.steps < sum(o.n_tokens for o in outs) / 2


def test_sampled_speculation_runs_and_respects_limits(fp32_generator):
    engine = LLMEngine(fp32_generator.runner, fp32_generator.chat,
                       EngineConfig(max_seq_len=1024, speculative="ngram", prefix_cache_bytes=0))
    out = engine.generate([ids(fp32_generator, PROMPTS[0])],
                          SamplingParams(max_tokens=24, temperature=0.8, seed=5, ignore_eos=True))[0]
    assert out.n_tokens == 24 and out.finish_reason == "length"
