"""Prefix cache: pure invariants under random workloads (property tests), then the real engine
with the cache on vs off."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.llm.engine import EngineConfig, LLMEngine
from core.llm.prefix_cache import PrefixCache
from core.llm.sampling import SamplingParams

BS = 4


def fake_reader(tokens: list[int]):
    """KV whose content is a function of (position, token): a wrong copy is detectable."""
    def read(start: int, stop: int):
        vals = np.array([[p * 1000 + tokens[p] for p in range(start, stop)]], np.float32)[..., None]
        return [vals.copy()], [vals + 0.5]
    return read


ops = st.lists(st.tuples(st.sampled_from(["insert", "match", "release"]),
                         st.lists(st.integers(0, 3), min_size=0, max_size=24)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(ops=ops, budget_blocks=st.integers(0, 12))
def test_random_workloads_keep_every_invariant(ops, budget_blocks):
    block_bytes = 2 * BS * 4
    cache = PrefixCache(budget_bytes=budget_blocks * block_bytes, block_size=BS)
    held: list[list] = []
    for op, tokens in ops:
        if op == "insert":
            cache.insert(tokens, fake_reader(tokens))
        elif op == "match":
            blocks = cache.match(tokens)
            for i, block in enumerate(blocks):  # content is exactly the KV of these tokens
                want = [p * 1000 + tokens[p] for p in range(i * BS, (i + 1) * BS)]
                assert block.keys[0][0, :, 0].tolist() == want
            held.append(blocks)
        elif held:
            cache.release(held.pop(0))
        assert cache.bytes_in_use <= cache.budget_bytes
        assert cache.bytes_in_use == sum(b.nbytes for b in cache.blocks.values())
        for blocks in held:  # a block in use is never evicted
            assert all(cache.blocks.get(b.key) is b for b in blocks)
        for block in cache.blocks.values():
            assert block.refs >= 0
            assert block.children == sum(1 for b in cache.blocks.values() if b.parent == block.key)


def test_longest_prefix_and_lru_evicts_chain_tails_first():
    cache = PrefixCache(budget_bytes=3 * 2 * BS * 4, block_size=BS)
    a = list(range(12))  # three blocks
    cache.insert(a, fake_reader(a))
    hit = cache.match(a + [99])
    assert len(hit) == 3
    cache.release(hit)
    b = [7] * 4  # a new chain needs room: the tail of chain a goes, its head stays
    cache.insert(b, fake_reader(b))
    assert len(cache.match(a)) == 2 and cache.stats.evictions == 1


# -- the real engine ---------------------------------------------------------------------------
SYSTEM = ("You are a meticulous assistant for a travel company. Answer briefly, in English, and "
          "always mention the city by name. " * 6)
GREEDY = SamplingParams(max_tokens=16, temperature=0)


def engine(generator, cache_bytes: int) -> LLMEngine:
    return LLMEngine(generator.runner, generator.chat,
                     EngineConfig(max_seq_len=1024, prefix_cache_bytes=cache_bytes))


def prefill_tokens(eng: LLMEngine) -> list[int]:
    counted: list[int] = []
    eng.on_step = lambda s: counted.append(s.tokens) if s.kind == "prefill" else None
    return counted


def test_shared_system_prompt_is_prefilled_once_with_identical_output(generator):
    questions = ["Where is the Eiffel Tower?", "What is the best month to visit Rome?",
                 "Name a museum in London."]
    prompts = [generator.chat.encode(generator.chat.chat_prompt(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])) for q in questions]
    cold = engine(generator, 0).generate(prompts, GREEDY)
    warm_engine = engine(generator, 64 << 20)
    counted = prefill_tokens(warm_engine)
    warm = [warm_engine.generate([p], GREEDY)[0] for p in prompts]
    assert [o.text for o in warm] == [o.text for o in cold]
    shared = len(generator.chat.encode(generator.chat.chat_prompt(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "x"}]))) - 10
    assert counted[0] == len(prompts[0])
    for n, p in zip(counted[1:], prompts[1:], strict=True):
        assert n <= len(p) - shared + 16  # only the new tokens (plus a partial block)


def test_multi_turn_chat_prefills_only_new_tokens(generator):
    eng = engine(generator, 64 << 20)
    counted = prefill_tokens(eng)
    messages = [{"role": "system", "content": SYSTEM}]
    previous_len = 0
    for turn, question in enumerate(["Hi, I want to visit Paris.", "What should I see first?",
                                     "And where should I eat?"]):
        messages.append({"role": "user", "content": question})
        ids = generator.chat.encode(generator.chat.chat_prompt(messages))
        answer = eng.generate([ids], GREEDY)[0]
        assert answer.text == generator.complete(ids, GREEDY).text
        if turn:
            new_tokens = len(ids) - previous_len
            assert counted[-1] <= new_tokens + 16, (counted[-1], new_tokens)
        messages.append({"role": "assistant", "content": answer.text})
        previous_len = len(ids) + answer.n_tokens


@settings(max_examples=8, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 12), st.booleans()), min_size=2, max_size=6))
def test_random_workloads_on_the_real_engine_match_cache_off(generator, requests):
    """Shared prefixes, tiny budget (constant eviction), cancellations: outputs never change."""
    heads = [generator.chat.encode(SYSTEM[: 60 * (k + 1)]) for k in range(3)]
    prompts = [heads[h] + list(range(200, 200 + tail)) for h, tail, _ in requests]
    params = SamplingParams(max_tokens=4, temperature=0)
    reference = engine(generator, 0).generate(prompts, params)
    eng = engine(generator, 40 * eng_block_bytes(generator))
    outs: list[list] = [[] for _ in prompts]
    seqs = [eng.add(p, params, outs[i].append) for i, p in enumerate(prompts)]
    for seq, (_, _, cancel) in zip(seqs, requests, strict=True):
        if cancel:
            eng.cancel(seq)
    while not all(s.finished for s in seqs):
        eng.step()
        assert eng.prefix_cache.bytes_in_use <= eng.prefix_cache.budget_bytes
    for out, ref, (_, _, cancel) in zip(outs, reference, requests, strict=True):
        if not cancel:
            assert "".join(o.text for o in out) == ref.text
    assert all(b.refs == 0 for b in eng.prefix_cache.blocks.values())


def eng_block_bytes(generator) -> int:
    r = generator.runner
    return 2 * r.n_layers * r.n_kv_heads * r.head_dim * 4 * 16
