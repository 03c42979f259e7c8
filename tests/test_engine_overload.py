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
