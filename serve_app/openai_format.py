"""The OpenAI wire format of generated text: response bodies, SSE chunks and usage.

/v1/chat/completions and /v1/completions differ only in how one choice is spelled; each
endpoint kind is one small class, and everything else is written once for both.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from core.build.artifacts import LLM_ID

from .schemas import Usage, new_id, now

Endpoint = Literal["chat", "completions"]


@dataclass
class Choice:
    """One choice's text (all of it, or a stream delta's piece) and what goes with it."""

    index: int
    text: str = ""
    finish: str | None = None
    logprobs: dict | None = None  # already in the endpoint's shape
    tool_calls: list[dict] | None = None


class TextCompletionFormat:
    """/v1/completions: a choice carries `text`."""

    endpoint: Endpoint = "completions"
    id_prefix = "cmpl"
    body_object = "text_completion"
    chunk_object = "text_completion"
    opens_with_role = False  # chat streams announce the assistant's role in a first chunk

    def choice(self, c: Choice) -> dict:
        return {"index": c.index, "text": c.text, "finish_reason": c.finish, "logprobs": c.logprobs}

    def delta(self, c: Choice) -> dict:
        return self.choice(c)

    def role_delta(self, index: int) -> dict:
        raise NotImplementedError("completions streams have no role chunk")

    def choices_of(self, body: dict) -> list[Choice]:
        return [Choice(c["index"], c["text"], c["finish_reason"], c.get("logprobs"))
                for c in body["choices"]]


class ChatCompletionFormat(TextCompletionFormat):
    """/v1/chat/completions: a choice carries a `message`, a chunk a `delta`."""

    endpoint: Endpoint = "chat"
    id_prefix = "chatcmpl"
    body_object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    opens_with_role = True

    def choice(self, c: Choice) -> dict:
        message = {"role": "assistant", "content": None if c.tool_calls else c.text}
        if c.tool_calls:
            message["tool_calls"] = c.tool_calls
        return {"index": c.index, "message": message, "finish_reason": c.finish, "logprobs": c.logprobs}

    def delta(self, c: Choice) -> dict:
        delta: dict = {"content": c.text} if c.text else {}
        if c.tool_calls:  # streamed calls carry their position in the list
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(c.tool_calls)]
        return {"index": c.index, "delta": delta, "finish_reason": c.finish, "logprobs": c.logprobs}

    def role_delta(self, index: int) -> dict:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                "logprobs": None}

    def choices_of(self, body: dict) -> list[Choice]:
        return [Choice(c["index"], c["message"].get("content") or "", c["finish_reason"],
                       c.get("logprobs"), c["message"].get("tool_calls")) for c in body["choices"]]


FORMATS: dict[Endpoint, TextCompletionFormat] = {"chat": ChatCompletionFormat(),
                                                 "completions": TextCompletionFormat()}


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def usage(prompt_tokens: int, n_tokens: int, cached_tokens: int = 0) -> dict:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=n_tokens,
                 total_tokens=prompt_tokens + n_tokens,
                 prompt_tokens_details={"cached_tokens": cached_tokens}).model_dump()


class Reply:
    """One response's id, creation time and endpoint format: its body or its SSE events."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.format = FORMATS[endpoint]
        self.id, self.created = new_id(self.format.id_prefix), now()

    def body(self, choices: list[Choice], usage: dict) -> dict:
        return {"id": self.id, "object": self.format.body_object, "created": self.created,
                "model": LLM_ID, "choices": [self.format.choice(c) for c in choices], "usage": usage}

    def _chunk(self, choices: list[dict]) -> dict:
        return {"id": self.id, "object": self.format.chunk_object, "created": self.created,
                "model": LLM_ID, "choices": choices}

    def opening(self, n: int = 1) -> list[str]:
        """Events before the first text: each choice's role chunk, for chat."""
        if not self.format.opens_with_role:
            return []
        return [sse(self._chunk([self.format.role_delta(i)])) for i in range(n)]

    def chunk(self, choice: Choice) -> str:
        return sse(self._chunk([self.format.delta(choice)]))

    def closing(self, usage: dict | None) -> list[str]:
        """Events after the last text: usage (when asked for with stream_options), then [DONE]."""
        usage_event = [sse({**self._chunk([]), "usage": usage})] if usage is not None else []
        return usage_event + [sse("[DONE]")]

    def replay(self, cached: dict) -> dict:
        """A cached body as this response: its own id and time."""
        return {**cached, "id": self.id, "created": self.created}

    async def replay_events(self, cached: dict, include_usage: bool) -> AsyncIterator[str]:
        """A cached body as an event stream: each choice whole in one chunk, then its finish."""
        body = self.replay(cached)
        choices = self.format.choices_of(body)
        for event in self.opening(len(choices)):
            yield event
        for c in choices:
            yield self.chunk(Choice(c.index, c.text, None, c.logprobs, c.tool_calls))
            yield self.chunk(Choice(c.index, finish=c.finish))
        for event in self.closing(body["usage"] if include_usage else None):
            yield event
