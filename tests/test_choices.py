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


def test_text_answers_stream_as_they_come_when_tools_are_offered():
    deltas = feed(ChoiceBuilder(1, "chat", None, False, tools=True), ["", "Hello", " there"])
    assert [(d.index, d.text, d.finish) for d in deltas] == [(1, "Hello", None), (1, " there", "stop")]


def test_a_call_cut_by_max_tokens_finishes_with_length():
    deltas = feed(ChoiceBuilder(0, "chat", None, False, tools=True),
                  ['<tool_call>{"name": "f", "arguments": {"x": ', "1"], finish="length")
    assert deltas[0].tool_calls[0]["function"]["name"] == "f" and deltas[-1].finish == "length"
