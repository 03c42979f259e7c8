"""The served variant's greedy output is the same alone, in a batch of 16, and with speculation.

Real model, real engine. This holds because the built graphs make a row's arithmetic independent
of what shares its step (core/build/llama.py): if a kernel path changed with the batch or the
number of query tokens, int8 activations would turn the difference into flipped near-ties and
these comparisons would fail on a few prompts.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.build.artifacts import SERVED_VARIANT, build_llm
from core.llm.engine import EngineConfig, LLMEngine
from core.llm.sampling import SamplingParams
from core.llm.textgen import TextGenerator
from core.quant.variants import ensure_variant
from deployments.models import runnable_variant

QUESTIONS = [
    "What is the capital of France?", "Name three primary colours.", "Write a haiku about the sea.",
    "Explain gravity in one sentence.", "What is a prime number?", "Why is the sky blue?",
    "What does a compiler do?", "How do plants make food?", "List two benefits of exercise.",
    "What is the boiling point of water?",
]
TEXTS = [
    "The meeting is moved to Thursday at ten because the projector in room four is broken.",
    "Our new bakery opens on Monday; the first hundred customers get a free loaf of bread.",
    "Please remember to water the plants in the office while I am away next week.",
]
MAX_TOKENS = 40


# What the LLM deployment serves on this machine (w8-own, or w8-fa16 without AVX-512 VNNI)
@pytest.fixture(scope="module", params=[runnable_variant(SERVED_VARIANT, "cpu"), "w8-kv8"])
def served(request) -> TextGenerator:
    """The served variant, and the same weights with an int8 KV cache (ONNX Runtime's
    dequantizing attention kernels must keep a row's arithmetic independent of its step too)."""
    model_dir = build_llm(progress=lambda _: None)
    ensure_variant(model_dir, request.param)
    return TextGenerator(model_dir, variant=request.param, threads=2)


@pytest.fixture(scope="module")
def prompts(served) -> list[list[int]]:
    chat = served.chat
    messages = [q for q in QUESTIONS] + [f"Repeat this text exactly:\n\n{t}" for t in TEXTS]
    messages += [f"Rewrite this text in a formal tone:\n\n{t}" for t in TEXTS]
    return [chat.encode(chat.chat_prompt([{"role": "user", "content": m}])) for m in messages]


def greedy(served: TextGenerator, prompts: list[list[int]], config: EngineConfig,
           together: bool) -> tuple[list[list[int]], LLMEngine]:
    """Output token ids per prompt: all submitted at once (together) or one after another."""
    engine = LLMEngine(served.runner, served.chat, config)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    groups = [prompts] if together else [[p] for p in prompts]
    outputs = []
    for group in groups:
        seqs = [engine.add(p, params, lambda out: None, check_wait=False) for p in group]  # offline
        while not all(s.finished for s in seqs):
            engine.step()
        outputs += [list(s.output_ids) for s in seqs]
    return outputs, engine


@pytest.fixture(scope="module")
def alone(served, prompts) -> list[list[int]]:
    return greedy(served, prompts, EngineConfig(max_running=1, prefix_cache_bytes=0), False)[0]


def test_a_batch_of_16_gives_every_row_its_output_alone(served, prompts, alone):
    assert len(prompts) == 16
    batched, _ = greedy(served, prompts, EngineConfig(max_running=16, prefix_cache_bytes=0), True)
    same = sum(a == b for a, b in zip(alone, batched, strict=True))
    assert same == len(prompts), f"{same}/{len(prompts)} identical"


def test_speculation_gives_the_output_alone(served, prompts, alone):
    """Prompt lookup on, as served: verification runs several query tokens per step."""
    outs, engine = greedy(served, prompts, EngineConfig(max_running=1, prefix_cache_bytes=0,
                                                        speculative="ngram"), False)
    assert engine.spec.stats.draft_tokens > 0 and engine.spec.stats.accepted_tokens > 0
    same = sum(a == b for a, b in zip(alone, outs, strict=True))
    assert same == len(prompts), f"{same}/{len(prompts)} identical"


def test_prefix_cache_and_chunked_prefill_give_the_output_alone(served, prompts, alone):
    """KV reused from an earlier request, and prompts prefilled in 16-token chunks."""
    config = EngineConfig(max_running=4, max_prefill_tokens=16)
    outs, engine = greedy(served, prompts + prompts, config, True)
    assert engine.prefix_cache.stats.hit_tokens > 0
    assert outs[:16] == alone and outs[16:] == alone


def test_one_token_and_multi_token_forwards_agree_bit_for_bit(served):
    """The graph property itself: scoring a continuation one token per forward and several per
    forward gives identical logits at every position."""
    runner = served.runner
    rng = np.random.default_rng(0)
    prompt, cont = rng.integers(100, 40000, 30).tolist(), rng.integers(100, 40000, 9).tolist()
    per_width = []
    for width in (1, 2, 3, 9):
        slots = runner.make_slots(1, 64)
        runner.forward_slots(slots, 0, 1, np.array([prompt]), np.array([30]), np.array([[29]]))
        logits = []
        for lo in range(0, 9, width):
            chunk = cont[lo:lo + width]
            logits.extend(runner.forward_slots(slots, 0, 1, np.array([chunk]), np.array([len(chunk)]),
                                               np.arange(len(chunk))[None])[0])
        per_width.append(np.array(logits))
    for other in per_width[1:]:
        assert np.array_equal(per_width[0], other)


def test_device_kv_slots_give_the_output_alone(served, prompts, alone):
    """KV slots bound by address (how a GPU keeps them: core/llm/device_kv.py), here in host
    memory, with the prefix cache copying blocks out of and back into them."""
    served.runner.kv_device = "cpu"
    try:
        outs, engine = greedy(served, prompts + prompts, EngineConfig(max_running=4, max_prefill_tokens=16),
                              True)
    finally:
        served.runner.kv_device = None
    assert type(engine.slots).__name__ == "DeviceKVSlots"
    assert engine.prefix_cache.stats.hit_tokens > 0
    assert outs[:16] == alone and outs[16:] == alone
