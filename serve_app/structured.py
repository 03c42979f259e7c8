"""Structured output for chat: response_format and tools as a grammar the engine decodes under,
tools described to the model and earlier calls rendered in the history, and tool calls parsed back.

Tool calls use the Hermes convention that chatml models know: the assistant answers
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; results come back as `tool` messages.
With tool_choice "auto" the grammar is `call | text`, and text may not start with "<", so the first
token decides (and a stream knows at once whether it is streaming text or a call).

Parallel tool calls (OpenAI's `parallel_tool_calls`, true unless false) are one call or more, one
a line. This model, free to add calls, tends to repeat the ones it made: a call that repeats an
earlier one ends the answer before it (the engine's stop_at_repeat), so it costs the tokens of
one repeated call at most; `parallel_tool_calls: false` allows exactly one call.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from core.llm.constraint import JSON_OPTIONS, GrammarError, json_schema_grammar, lark_grammar

from .errors import APIError
from .schemas import ChatCompletionRequest, ChatMessage, Tool

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class Structure:
    grammar: str | None = None  # what the engine constrains the answer to; None: free text
    tools: tuple[Tool, ...] = ()  # the functions the answer may call
    parallel: bool = False  # several calls in one answer

    def params(self) -> dict:
        """What the engine needs to know (SamplingParams fields)."""
        return {"grammar": self.grammar, "stop_at_repeat": CALL_CLOSE if self.parallel else None}


def structure_for(req: ChatCompletionRequest) -> Structure:
    """The request's grammar; a schema or tool_choice that cannot be honoured is a 400 naming it."""
    text_schema = _format_schema(req)
    tools = tuple(req.tools or ()) if req.tool_choice != "none" else ()
    if not tools:
        if text_schema is None:
            return Structure()
        return Structure(_compile(lambda: json_schema_grammar(*text_schema), "response_format"))
    choice = req.tool_choice or "auto"
    if not isinstance(choice, str):
        tools = tuple(t for t in tools if t.function.name == choice.function.name)
        if not tools:
            raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not in tools",
                           "tool_choice")
    calls = {"anyOf": [_call_schema(t) for t in tools], "x-guidance": JSON_OPTIONS}
    parallel = req.parallel_tool_calls is not False
    call = f'call: "{CALL_OPEN}" %json {json.dumps(calls)} "{CALL_CLOSE}"'
    call += '\ncalls: call ("\\n" call)*' if parallel else "\ncalls: call"
    if choice in ("required",) or not isinstance(choice, str):
        lark = f"start: calls\n{call}\n"
    elif text_schema is not None:  # auto, and a text answer must be JSON
        schema = {**(text_schema[0] or {"type": "object"}), "x-guidance": JSON_OPTIONS}
        lark = f"start: calls | answer\nanswer: %json {json.dumps(schema)}\n{call}\n"
    else:
        lark = f"start: calls | TEXT\n{call}\nTEXT: /[^<][\\s\\S]*/\n"
    return Structure(_compile(lambda: lark_grammar(lark), "tools"), tools, parallel)


def _format_schema(req: ChatCompletionRequest) -> tuple[dict | None, bool] | None:
    """(schema, lenient) for a JSON answer; None: free text."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return None, False
    return fmt.json_schema.schema_ or {}, not fmt.json_schema.strict


def _call_schema(tool: Tool) -> dict:
    return {"type": "object", "properties": {"name": {"const": tool.function.name},
                                             "arguments": tool.function.parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def _compile(build, param: str) -> str:
    try:
        return build()
    except GrammarError as exc:
        raise APIError(400, f"invalid schema: {exc}", param, "invalid_schema") from exc


# -- the prompt ----------------------------------------------------------------------------
def chat_messages(req: ChatCompletionRequest, structure: Structure) -> list[dict[str, str]]:
    """The history as the chat template's plain {role, content} messages: earlier tool calls as
    the assistant wrote them, tool results as `tool` turns, the tools described in the system
    prompt."""
    messages = [{"role": m.role, "content": _content(m)} for m in req.messages]
    if structure.tools:
        described = tools_prompt(structure.tools)
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + described}
        else:
            messages.insert(0, {"role": "system", "content": described})
    return messages


def _content(message: ChatMessage) -> str:
    calls = [f'{CALL_OPEN}{{"name": {json.dumps(c.function.name)}, "arguments": '
             f'{c.function.arguments}}}{CALL_CLOSE}' for c in message.tool_calls or ()]
    return "\n".join(([message.text()] if message.text() else []) + calls)


def tools_prompt(tools: tuple[Tool, ...]) -> str:
    listed = "\n".join(json.dumps(t.function.model_dump(exclude_none=True)) for t in tools)
    return ("You can call functions. They are:\n<tools>\n" + listed + "\n</tools>\n"
            f'To call one, answer {CALL_OPEN}{{"name": <function name>, "arguments": <arguments '
            f"object>}}{CALL_CLOSE}. Its result comes back in a message from the tool.")


# -- the answer ----------------------------------------------------------------------------
def parse_tool_calls(text: str, cut: bool = False) -> list[dict] | None:
    """OpenAI tool_calls from an answer that is one call or more; None for a text answer. cut (by
    max_tokens): the calls that were finished, if any."""
    calls, at = [], _skip_space(text, 0)
    while at < len(text):
        if not text.startswith(CALL_OPEN, at):
            break
        try:  # the JSON object ends the call, whatever its strings hold
            call, end = _JSON.raw_decode(text, at + len(CALL_OPEN))
        except json.JSONDecodeError:
            break
        if not (isinstance(call, dict) and text.startswith(CALL_CLOSE, end)):
            break
        at = _skip_space(text, end + len(CALL_CLOSE))
        calls.append({"id": new_call_id(), "type": "function",
                      "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}})
    return calls if calls and (at == len(text) or cut) else None


_JSON = json.JSONDecoder()


def _skip_space(text: str, at: int) -> int:
    return len(text) - len(text[at:].lstrip())


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
