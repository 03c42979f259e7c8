"""The OpenAI wire format of generated text: response bodies, SSE chunks and usage.

/v1/chat/completions and /v1/completions differ only in how one choice is spelled; each
endpoint kind is one small class, and everything else is written once for both.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Literal

from core.build.artifacts import LLM_ID

from .schemas import Usage, new_id, now

Endpoint = Literal["chat", "completions"]


class TextCompletionFormat:
    """/v1/completions: a choice carries `text`."""

    endpoint: Endpoint = "completions"
    id_prefix = "cmpl"
    body_object = "text_completion"
    chunk_object = "text_completion"
    opens_with_role = False  # chat streams announce the assistant's role in a first chunk

    def choice(self, text: str, finish: str) -> dict:
        return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

    def delta(self, text: str | None, finish: str | None) -> dict:
        return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}

    def role_delta(self) -> dict:
        raise NotImplementedError("completions streams have no role chunk")

    def text_of(self, body: dict) -> str:
        return body["choices"][0]["text"]


class ChatCompletionFormat(TextCompletionFormat):
    """/v1/chat/completions: a choice carries a `message`, a chunk a `delta`."""

    endpoint: Endpoint = "chat"
    id_prefix = "chatcmpl"
    body_object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    opens_with_role = True

    def choice(self, text: str, finish: str) -> dict:
        return {"index": 0, "message": {"role": "assistant", "content": text},
                "finish_reason": finish, "logprobs": None}

    def delta(self, text: str | None, finish: str | None) -> dict:
        return {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish,
                "logprobs": None}

    def role_delta(self) -> dict:
        return {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                "logprobs": None}

    def text_of(self, body: dict) -> str:
        return body["choices"][0]["message"]["content"]


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

    def body(self, text: str, finish: str, usage: dict) -> dict:
        return {"id": self.id, "object": self.format.body_object, "created": self.created,
                "model": LLM_ID, "choices": [self.format.choice(text, finish)], "usage": usage}

    def _chunk(self, choices: list[dict]) -> dict:
        return {"id": self.id, "object": self.format.chunk_object, "created": self.created,
                "model": LLM_ID, "choices": choices}

    def opening(self) -> list[str]:
        """Events before the first text: the role chunk, for chat."""
        return [sse(self._chunk([self.format.role_delta()]))] if self.format.opens_with_role else []

    def chunk(self, text: str | None, finish: str | None = None) -> str:
        return sse(self._chunk([self.format.delta(text, finish)]))

    def closing(self, usage: dict | None) -> list[str]:
        """Events after the last text: usage (when asked for with stream_options), then [DONE]."""
        usage_event = [sse({**self._chunk([]), "usage": usage})] if usage is not None else []
        return usage_event + [sse("[DONE]")]

    def replay(self, cached: dict) -> dict:
        """A cached body as this response: its own id and time."""
        return {**cached, "id": self.id, "created": self.created}

    async def replay_events(self, cached: dict, include_usage: bool) -> AsyncIterator[str]:
        """A cached body as an event stream: the whole text in one chunk."""
        body = self.replay(cached)
        for event in self.opening():
            yield event
        yield self.chunk(self.format.text_of(body))
        yield self.chunk(None, body["choices"][0]["finish_reason"])
        for event in self.closing(body["usage"] if include_usage else None):
            yield event
