"""A choice's streamed outputs as OpenAI deltas: text flows, a tool call streams as OpenAI's do."""

from __future__ import annotations

import json

from serve_app.choices import ChoiceBuilder


def feed(builder: ChoiceBuilder, pieces: list[str], finish: str = "stop") -> list:
    outs = [{"text": p, "logprobs": [], "n_tokens": i + 1, "cached_tokens": 0,
             "finish_reason": finish if i == len(pieces) - 1 else None} for i, p in enumerate(pieces)]
    return [c for out in outs for c in builder.deltas(out)]


def test_a_streamed_call_sends_id_and_name_then_argument_pieces_then_finish():
    pieces = ["<tool", "_call>{\"name\": \"get", "_weather\", \"arg", "uments\": {\"city\"", ": \"Pa",
              "ris\"}", "}</tool_call>"]
    deltas = feed(ChoiceBuilder(0, "chat", None, False, tools=True), pieces)
    head = deltas[0].tool_calls[0]
    assert head["function"] == {"name": "get_weather", "arguments": ""} and head["id"].startswith("call_")
    args = "".join(d.tool_calls[0]["function"]["arguments"] for d in deltas[1:] if d.tool_calls)
    assert json.loads(args) == {"city": "Paris"}
    assert all(not d.text for d in deltas) and deltas[-1].finish == "tool_calls"


def test_parallel_calls_stream_each_with_its_index_and_parse_whole():
    from serve_app.structured import parse_tool_calls

    text = ('<tool_call>{"name": "f", "arguments": {"s": "}</tool_call>"}}</tool_call>\n'
            '<tool_call>{"name": "g", "arguments": {"n": 1}}</tool_call>\n')
    pieces = [text[i:i + 5] for i in range(0, len(text), 5)]
    deltas = feed(ChoiceBuilder(0, "chat", None, False, tools=True), pieces)
    calls = [tc for d in deltas if d.tool_calls for tc in d.tool_calls]
    heads = [tc for tc in calls if "id" in tc]
    assert [(h["index"], h["function"]["name"]) for h in heads] == [(0, "f"), (1, "g")]
    args = ["".join(tc["function"]["arguments"] for tc in calls if tc["index"] == i) for i in (0, 1)]
    assert [json.loads(a) for a in args] == [{"s": "}</tool_call>"}, {"n": 1}]
    assert deltas[-1].finish == "tool_calls"
    whole = parse_tool_calls(text)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole] == [
        ("f", {"s": "}</tool_call>"}), ("g", {"n": 1})]
    cut = text + '<tool_call>{"name": "f"'
    assert parse_tool_calls(cut) is None  # not calls: unless it was cut by max_tokens
    assert [c["function"]["name"] for c in parse_tool_calls(cut, cut=True)] == ["f", "g"]
    assert parse_tool_calls('<tool_call>{"name": "f"', cut=True) is None


def test_text_answers_stream_as_they_come_when_tools_are_offered():
    deltas = feed(ChoiceBuilder(1, "chat", None, False, tools=True), ["", "Hello", " there"])
    assert [(d.index, d.text, d.finish) for d in deltas] == [(1, "Hello", None), (1, " there", "stop")]


def test_a_call_cut_by_max_tokens_finishes_with_length():
    builder = ChoiceBuilder(0, "chat", None, False, tools=True)
    deltas = feed(builder, ['<tool_call>{"name": "f", "arguments": {"x": ', "1"], finish="length")
    assert deltas[0].tool_calls[0]["function"]["name"] == "f" and deltas[-1].finish == "length"
    assert builder.final().tool_calls is None and builder.final().text  # no call was finished


def test_calls_cut_by_max_tokens_keep_the_finished_ones():
    builder = ChoiceBuilder(0, "chat", None, False, tools=True)
    feed(builder, ['<tool_call>{"name": "f", "arguments": {}}</tool_call>\n<tool_call>{"na'], finish="length")
    whole = builder.final()
    assert [c["function"]["name"] for c in whole.tool_calls] == ["f"] and whole.finish == "length"


def test_a_cached_multi_choice_body_replays_as_a_stream():
    import asyncio

    from serve_app.openai_format import Choice, Reply

    reply = Reply("chat")
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = reply.body([Choice(0, "hi", "stop"), Choice(1, "", "tool_calls", None, [call])],
                      {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
    assert body["choices"][1]["message"] == {"role": "assistant", "content": None, "tool_calls": [call]}

    async def events() -> list[str]:
        return [e async for e in Reply("chat").replay_events(body, include_usage=False)]

    chunks = [json.loads(e[6:]) for e in asyncio.run(events()) if e != "data: [DONE]\n\n"]
    deltas = [c["choices"][0] for c in chunks]
    assert {d["index"] for d in deltas} == {0, 1}
    assert [d["delta"].get("content") for d in deltas if d["index"] == 0] == ["", "hi", None]
    calls = [d["delta"]["tool_calls"] for d in deltas if "tool_calls" in d["delta"]]
    assert calls == [[{"index": 0, **call}]]
    assert [d["finish_reason"] for d in deltas if d["finish_reason"]] == ["stop", "tool_calls"]
