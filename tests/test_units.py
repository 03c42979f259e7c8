"""Pure logic: sampling rules, incremental detokenization with stop strings, request schemas."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from core.llm.detokenizer import StreamDecoder
from core.llm.sampling import SamplingParams, sample
from serve_app.schemas import ChatCompletionRequest, EmbeddingRequest


class CharTokenizer:
    """Token id = one character (or a UTF-8 byte when >= 256), for detokenizer tests."""

    def decode(self, ids, skip_special_tokens=True):
        data = b"".join(bytes([i - 256]) if i >= 256 else chr(i).encode() for i in ids)
        return data.decode("utf-8", errors="replace")


def feed(decoder: StreamDecoder, text: str) -> list[str]:
    return [decoder.push(ord(c)) for c in text]


def test_stop_string_is_never_released_even_across_tokens():
    d = StreamDecoder(CharTokenizer(), stop=("STOP",))
    out = "".join(feed(d, "hello STO"))
    assert out == "hello "  # "STO" held back: it may begin the stop string
    out += d.push(ord("P"))
    assert d.stopped and out == "hello "


def test_held_back_text_is_released_when_it_cannot_be_a_stop():
    d = StreamDecoder(CharTokenizer(), stop=("STOP",))
    out = "".join(feed(d, "ST")) + d.push(ord("x"))
    assert out == "STx" and not d.stopped


def test_a_segment_repeating_an_earlier_one_stops_before_it_and_is_never_released():
    d = StreamDecoder(CharTokenizer(), repeat_end="</c>")
    out = "".join(feed(d, "<c>a</c>\n<c>b</c>\n<c>a</"))
    assert out == "<c>a</c>\n<c>b</c>\n" and not d.stopped  # "<c>a</" held back: it may repeat
    out += d.push(ord("c")) + d.push(ord(">"))
    assert d.stopped and out == d.text == "<c>a</c>\n<c>b</c>\n"


def test_a_segment_that_only_begins_like_an_earlier_one_is_released():
    d = StreamDecoder(CharTokenizer(), repeat_end="</c>")
    out = "".join(feed(d, "<c>ab</c><c>a")) + d.push(ord("c"))
    assert out == "<c>ab</c><c>ac" and not d.stopped


def test_partial_utf8_waits_for_the_whole_character():
    d = StreamDecoder(CharTokenizer())
    e_acute = "é".encode()
    assert d.push(256 + e_acute[0]) == ""
    assert d.push(256 + e_acute[1]) == "é"


def test_greedy_picks_argmax_and_top_p_restricts_support():
    logits = np.array([0.0, 5.0, 4.9, -3.0])
    rng = np.random.default_rng(0)
    assert sample(logits, SamplingParams(temperature=0), rng) == 1
    picks = {sample(logits, SamplingParams(temperature=1.0, top_p=0.5), rng) for _ in range(200)}
    assert picks == {1}
    picks = {sample(logits, SamplingParams(temperature=1.0, top_p=0.99), rng) for _ in range(300)}
    assert picks == {1, 2}


@pytest.mark.parametrize("bad", [{"max_tokens": 0}, {"temperature": 2.5}, {"top_p": 0.0}])
def test_sampling_params_reject_out_of_range(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_chat_request_rejects_unknown_fields_and_bad_ranges():
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    ChatCompletionRequest(**base)
    for bad in [{"temperature": 3}, {"n": 9}, {"bogus": 1}, {"messages": []}, {"max_tokens": -1},
                {"logprobs": True, "top_logprobs": 21}, {"top_logprobs": 2}, {"tool_choice": "auto"},
                {"logit_bias": {"abc": 1}}, {"logit_bias": {"5": 101}},
                {"response_format": {"type": "json_schema"}}]:
        with pytest.raises(ValidationError):
            ChatCompletionRequest(**(base | bad))


def test_embedding_request_accepts_string_or_list():
    assert EmbeddingRequest(model="m", input="a").texts() == ["a"]
    assert EmbeddingRequest(model="m", input=["a", "b"]).texts() == ["a", "b"]
    with pytest.raises(ValidationError):
        EmbeddingRequest(model="m", input=[])


def test_any_int64_seed_gives_a_reproducible_stream():
    from core.llm.sampling import rng_for

    for seed in (-1, -(2**63), 0, 2**63 - 1):
        assert rng_for(seed).integers(1 << 30) == rng_for(seed).integers(1 << 30)
    assert rng_for(-1).integers(1 << 30) != rng_for(-2).integers(1 << 30)


def test_a_tiny_positive_temperature_samples_the_top_token():
    """Found by the fuzz test: temperature 2.2e-313 made logits / T overflow into NaN (a 500)."""
    from core.llm.sampling import SamplingParams, sample, token_probs

    logits = np.array([1.0, 3.0, -2.0, 3.0 - 1e-6], np.float32)
    params = SamplingParams(temperature=2.2250738585e-313)
    probs = token_probs(logits, params)
    assert not np.isnan(probs).any() and probs[1] == 1.0
    assert sample(logits, params, np.random.default_rng(0)) == 1


def test_batches_run_as_one_forward_when_onnx_runtime_allows_it():
    from core.llm.model_runner import fitting_groups

    lens = np.array([5, 0, 9, 3])
    # a decode step: one forward over every row, idle row 1 included
    assert fitting_groups(lens, np.array([1, 0, 1, 1]), 64) == [(0, 4)]
    # fresh prompts of different lengths: one forward; trailing idle rows are not run
    assert fitting_groups(np.zeros(4, int), np.array([3, 7, 0, 0]), 64) == [(0, 2)]
    # several new tokens after a past: ORT 1.31 takes that at batch 1 only
    assert fitting_groups(lens, np.array([2, 0, 4, 0]), 64) == [(0, 1), (2, 3)]
    # a range whose width would write past an idle row's capacity is split around it
    assert fitting_groups(np.array([0, 62, 0]), np.array([4, 0, 4]), 64) == [(0, 1), (2, 3)]
    assert fitting_groups(lens, np.zeros(4, int), 64) == []


def test_gpu_smoke_reads_onnx_runtimes_node_placement_log():
    from bench.gpu_smoke import placements

    mixed = ("[V:onnxruntime:, inference_session.cc:1 Verify] Node placements\n"
             "[V:onnxruntime:, inference_session.cc:1 Verify]  Node(s) placed on "
             "[CUDAExecutionProvider]. Number of nodes: 16\n"
             "[V:onnxruntime:, inference_session.cc:1 Verify]  Node(s) placed on "
             "[CPUExecutionProvider].    Number of nodes: 1\n")
    assert placements(mixed) == {"CUDAExecutionProvider": 16, "CPUExecutionProvider": 1}
    assert placements("All nodes placed on [CUDAExecutionProvider]. Number of nodes: 521") == {
        "CUDAExecutionProvider": 521}
    assert placements("no placement lines") == {}


def test_stream_message_budget_stretches_the_interval_as_streams_open():
    from deployments.llm import stream_interval_s

    assert stream_interval_s(0.1, None, 16) == 0.1  # no budget: the fixed interval
    assert stream_interval_s(0.1, 40, 1) == 0.1  # few streams: the interval is the floor
    assert stream_interval_s(0.1, 40, 16) == pytest.approx(0.4)  # 16 share 40 messages/s
    assert stream_interval_s(0.0, 40, 0) == 0.0


def test_paced_messages_merge_tokens_within_the_interval_and_send_the_finish_at_once():
    import asyncio

    from core.llm.engine.sequence import Output
    from deployments.llm import OutputQueue, paced_messages

    async def scenario() -> list[tuple[str, float]]:
        queue = OutputQueue()
        loop = asyncio.get_running_loop()
        start = loop.time()
        got: list[tuple[str, float]] = []

        async def produce() -> None:
            for i, finish in ((0, None), (1, None), (2, None), (3, "stop")):
                queue.put_nowait(Output(f"t{i} ", i + 1, finish))
                await asyncio.sleep(0.05)

        producer = asyncio.create_task(produce())
        async for out in paced_messages(queue, lambda: 10.0):  # an interval far longer than the run
            got.append((out.text, loop.time() - start))
        await producer
        return got

    messages = asyncio.run(scenario())
    # the first token at once; the rest waits for the interval, but the finish ends the wait
    assert [text for text, _ in messages] == ["t0 ", "t1 t2 t3 "]
    assert messages[1][1] < 1.0


def test_paced_messages_without_an_interval_send_what_has_queued_up_at_once():
    import asyncio

    from core.llm.engine.sequence import Output
    from deployments.llm import OutputQueue, paced_messages

    async def scenario() -> list[str]:
        queue = OutputQueue()
        for i, finish in ((0, None), (1, None), (2, "length")):
            queue.put_nowait(Output(f"t{i}", i + 1, finish))
        return [out.text async for out in paced_messages(queue, lambda: 0.0)]

    # all three were queued before the first read: one message carries them (no waiting)
    assert asyncio.run(scenario()) == ["t0t1t2"]


def test_logprobs_at_a_tiny_temperature_are_numbers():
    from core.llm.sampling import logprobs_of

    logits = np.array([1.0, 3.0, 2.0, -np.inf], np.float32)  # the last one masked by a grammar
    lp = logprobs_of(logits, SamplingParams(temperature=5e-324), token=1, top=3)
    assert lp.logprob == 0.0 and lp.top == ((1, 0.0),)  # the others have no probability left
    lp = logprobs_of(logits, SamplingParams(temperature=1.0), token=1, top=2)
    assert np.isclose(np.exp([p for _, p in lp.top]).sum(), 0.9, atol=0.1) and lp.top[0][0] == 1
