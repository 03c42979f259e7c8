"""The real engine (q4) under overload: refusal by expected wait, deadlines, tenant shares."""

from __future__ import annotations

import pytest

from core.llm.engine import EngineConfig, LLMEngine, Overloaded
from core.llm.sampling import SamplingParams

LONG = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)


def make_engine(generator, **limits) -> LLMEngine:
    return LLMEngine(generator.runner, generator.chat,
                     EngineConfig(**({"max_seq_len": 512, "max_running": 2} | limits)))


def ids(generator) -> list[int]:
    return generator.chat.encode(generator.chat.chat_prompt([{"role": "user", "content": "hi"}]))


def test_refuses_by_expected_wait_with_retry_after_and_keeps_the_accepted(generator):
    engine = make_engine(generator, max_waiting=50, max_queue_wait_s=2.0)
    for _ in range(20):  # what it would have measured: 200 steps ~ 10 s
        engine.speed.observe("decode", 2, 0.05)
    accepted = [engine.add(ids(generator), LONG, lambda _: None) for _ in range(2)]
    with pytest.raises(Overloaded) as refused:  # both slots are taken for ~200 steps
        engine.add(ids(generator), LONG, lambda _: None)
    assert refused.value.reason == "expected_wait" and refused.value.retry_after_s >= 5
    load = engine.load()
    assert load["expected_wait_s"]["default"] > 2.0 and load["running"] + load["waiting"] == 2
    assert load["expected_wait_s"]["*"] < 2.0  # another tenant would get the second slot
    for _ in range(3):
        engine.step()
    assert all(not s.finished for s in accepted)  # never dropped for the estimate


def test_expired_waiting_request_ends_before_prefill_and_running_one_frees_its_slot(generator):
    engine = make_engine(generator, max_running=1, max_queue_wait_s=None)
    outs: list = []
    running = engine.add(ids(generator), LONG, outs.append, timeout_s=0.3)
    waiting = engine.add(ids(generator), LONG, outs.append, timeout_s=0.0)
    engine.step()
    assert waiting.finished and waiting.n_cached == 0 and waiting.slot == -1  # never prefilled
    import time

    time.sleep(0.35)
    engine.step()
    assert running.finished and engine.scheduler.free_slots == [0]
    assert [o.finish_reason for o in outs if o.finish_reason] == ["timeout", "timeout"]


def test_one_tenant_cannot_fill_the_queue_while_another_waits(generator):
    engine = make_engine(generator, max_running=1, max_waiting=8, max_queue_wait_s=None)
    engine.add(ids(generator), LONG, lambda _: None, tenant="b")
    flood = 0
    with pytest.raises(Overloaded) as refused:
        for _ in range(9):
            engine.add(ids(generator), LONG, lambda _: None, tenant="a")
            flood += 1
    assert flood == 4 and refused.value.reason == "tenant_queue_full"  # half of max_waiting
    engine.add(ids(generator), LONG, lambda _: None, tenant="b")  # b still gets in


def test_full_queue_still_takes_a_tenant_below_its_even_split(generator):
    engine = make_engine(generator, max_running=1, max_waiting=4, max_queue_wait_s=None)
    for _ in range(4):  # alone, "a" may fill the queue
        engine.add(ids(generator), LONG, lambda _: None, tenant="a")
    engine.add(ids(generator), LONG, lambda _: None, tenant="b")
    with pytest.raises(Overloaded):
        engine.add(ids(generator), LONG, lambda _: None, tenant="a")


def test_light_tenant_gets_a_slot_from_the_flood_and_the_paused_one_resumes_unchanged(generator):
    engine = make_engine(generator, max_waiting=8, max_queue_wait_s=2.0)
    for _ in range(20):  # what it would have measured: 60 steps ~ 6 s
        engine.speed.observe("decode", 2, 0.1)
    params = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
    texts: dict[str, list[str]] = {"a0": [], "a1": [], "b": []}
    flood = [engine.add(ids(generator), params, lambda o, k=f"a{i}": texts[k].append(o.text),
                        tenant="a") for i in range(2)]
    for _ in range(6):  # prefill, then a few tokens each
        engine.step()
    with pytest.raises(Overloaded):  # the flood's own next request waits for its slots
        engine.add(ids(generator), params, lambda _: None, tenant="a")
    assert engine.load()["expected_wait_s"]["*"] < 2.0  # another tenant: the slot is its share
    light = engine.add(ids(generator), SamplingParams(max_tokens=4, temperature=0),
                       lambda o: texts["b"].append(o.text), tenant="b")
    engine.step()
    assert light.slot >= 0 and flood[1].slot == -1  # the flood's newest gave its slot up
    while not all(s.finished for s in flood + [light]):
        engine.step()
    assert light.first_token_at < min(s.last_token_at for s in flood)
    # paused and resumed from the prefix cache: the same greedy text as its twin that kept its slot
    assert "".join(texts["a1"]) == "".join(texts["a0"]) and len(flood[1].output_ids) == 60
    assert engine.scheduler.free_slots == [0, 1] and not engine.scheduler.waiting
