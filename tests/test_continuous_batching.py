"""The continuous-batching engine with the real q4 model: same answers as one at a time."""

from __future__ import annotations

import pytest

from core.llm.chat_tokenizer import PromptTooLong
from core.llm.engine import EngineConfig, LLMEngine, Overloaded
from core.llm.engine.sequence import Status
from core.llm.sampling import SamplingParams

QUESTIONS = ["What is the capital of France?", "Name three colours.", "Write a haiku about the sea.",
             "What is 2+2?", "Tell me a joke.", "Explain gravity in one sentence.",
             "List two animals.", "Who wrote Hamlet?"]
GREEDY = SamplingParams(max_tokens=32, temperature=0)


def chat_ids(generator, question: str) -> list[int]:
    return generator.chat.encode(generator.chat.chat_prompt([{"role": "user", "content": question}]))


def make_engine(generator, **limits) -> LLMEngine:
    return LLMEngine(generator.runner, generator.chat, EngineConfig(**({"max_seq_len": 1024} | limits)))


@pytest.fixture(scope="module")
def alone(generator):
    return {q: generator.complete(chat_ids(generator, q), GREEDY) for q in QUESTIONS}


def test_batched_greedy_equals_each_request_alone(generator, alone):
    outs = make_engine(generator).generate([chat_ids(generator, q) for q in QUESTIONS], GREEDY)
    for q, out in zip(QUESTIONS, outs, strict=True):
        assert (out.text, out.n_tokens, out.finish_reason) == (
            alone[q].text, alone[q].n_tokens, alone[q].finish_reason), q


def test_requests_joining_mid_decode_get_their_own_answer(generator, alone):
    engine = make_engine(generator)
    got: dict[str, list] = {q: [] for q in QUESTIONS[:3]}
    first = engine.add(chat_ids(generator, QUESTIONS[0]), GREEDY, got[QUESTIONS[0]].append)
    for _ in range(5):
        engine.step()
    assert first.status is Status.DECODING and len(first.output_ids) >= 3
    later = [engine.add(chat_ids(generator, q), GREEDY, got[q].append) for q in QUESTIONS[1:3]]
    while not all(s.finished for s in [first, *later]):
        engine.step()
    for q, outs in got.items():
        assert "".join(o.text for o in outs) == alone[q].text


def test_long_prompt_is_prefilled_in_chunks_with_the_same_answer(generator):
    question = "Summarise: " + "The quick brown fox jumps over the lazy dog. " * 20
    ids = chat_ids(generator, question)
    engine = make_engine(generator, max_prefill_tokens=64)
    chunked = engine.generate([ids], GREEDY)[0]
    assert len(ids) > 3 * 64
    assert chunked.text == generator.complete(ids, GREEDY).text


def test_each_sequence_keeps_its_own_sampling_params(generator):
    engine = make_engine(generator)
    ids = chat_ids(generator, QUESTIONS[2])
    sampled = SamplingParams(max_tokens=16, temperature=0.9, seed=11)
    outs = engine.generate([ids, ids], sampled)
    short = engine.generate([ids], SamplingParams(max_tokens=3, temperature=0))[0]
    assert outs[0].text == outs[1].text == generator.complete(ids, sampled).text
    assert short.n_tokens == 3 and short.finish_reason == "length"


def test_cancel_frees_the_slot_and_reports_abort(generator):
    engine = make_engine(generator, max_running=2)
    outs: list = []
    seq = engine.add(chat_ids(generator, QUESTIONS[1]), GREEDY, outs.append)
    for _ in range(4):
        engine.step()
    engine.cancel(seq)
    engine.step()
    assert seq.finished and outs[-1].finish_reason == "abort"
    assert sorted(engine.scheduler.free_slots) == [0, 1] and engine.slots.lens.sum() == 0


def test_limits_running_waiting_and_prompt_length(generator):
    engine = make_engine(generator, max_running=2, max_waiting=2)
    seqs = [engine.add(chat_ids(generator, q), GREEDY, lambda _: None) for q in QUESTIONS[:2]]
    with pytest.raises(Overloaded):
        engine.add(chat_ids(generator, QUESTIONS[2]), GREEDY, lambda _: None)
    engine.step()  # admits both into slots, the waiting queue drains
    more = [engine.add(chat_ids(generator, q), GREEDY, lambda _: None) for q in QUESTIONS[2:4]]
    peak = 0
    while not all(s.finished for s in seqs + more):
        engine.step()
        peak = max(peak, len(engine.scheduler.active))
    assert peak == 2
    with pytest.raises(PromptTooLong):
        engine.add(list(range(100, 1200)), GREEDY, lambda _: None)



def test_start_makes_the_kv_slots_resident_before_any_request(generator, monkeypatch):
    """The first forward over fresh slots touches most of their capacity (seconds for GBs), so
    the engine pays it at start, before its thread takes requests."""
    engine = make_engine(generator, max_running=2, max_seq_len=256)
    calls = []
    monkeypatch.setattr(engine.slots, "prefault", lambda: calls.append(engine._thread))
    engine.start()
    try:
        assert calls == [None]  # once, before the engine thread existed
    finally:
        engine.shutdown()
