"""One choice's engine outputs as OpenAI choices: logprobs in the endpoint's shape, and an answer
that is a tool call turned into `tool_calls` (streamed: text flows at once, a call is held until it
is complete, then sent as one tool_calls delta)."""

from __future__ import annotations

from .logprobs import CompletionLogprobs, TokenTexts
from .openai_format import Choice, Endpoint
from .structured import parse_tool_calls


class ChoiceBuilder:
    def __init__(self, index: int, endpoint: Endpoint, texts: TokenTexts, logprobs: bool,
                 tools: bool) -> None:
        self.index, self.endpoint, self.texts = index, endpoint, texts
        self.logprobs, self.tools = logprobs, tools
        self.completion_logprobs = CompletionLogprobs(texts)
        self.parts: list[str] = []
        self.all_logprobs: list[dict] = []
        self.held: list[dict] = []  # logprobs of text not sent yet
        self.unsent = ""
        self.mode: str | None = None if tools else "text"  # "text" | "call", once the answer shows
        self.last: dict = {}

    def _render(self, logprobs: list[dict]) -> dict | None:
        if not self.logprobs:
            return None
        if self.endpoint == "chat":
            return self.texts.chat(logprobs)
        return self.completion_logprobs.render(logprobs)

    def whole(self, out: dict) -> Choice:
        """The complete choice from a finished generation."""
        calls = parse_tool_calls(out["text"]) if self.tools else None
        logprobs = CompletionLogprobs(self.texts).render(out["logprobs"]) if (
            self.logprobs and self.endpoint == "completions") else self._render(out["logprobs"])
        if calls is not None:
            finish = "tool_calls" if out["finish_reason"] == "stop" else out["finish_reason"]
            return Choice(self.index, "", finish, logprobs, calls)
        return Choice(self.index, out["text"], out["finish_reason"], logprobs)

    def deltas(self, out: dict) -> list[Choice]:
        """What to send for one streamed output (possibly nothing yet)."""
        self.last = out
        self.parts.append(out["text"])
        self.all_logprobs += out["logprobs"]
        self.held += out["logprobs"]
        self.unsent += out["text"]
        if self.mode is None and self.unsent.lstrip():
            self.mode = "call" if self.unsent.lstrip().startswith("<") else "text"
        if self.mode == "text":
            if not (self.unsent or out["finish_reason"]):
                return []
            (text, self.unsent), (held, self.held) = (self.unsent, ""), (self.held, [])
            return [Choice(self.index, text, out["finish_reason"], self._render(held))]
        if not out["finish_reason"]:
            return []
        whole = self.final()  # a call (or an answer that never showed): send it whole
        if whole.tool_calls is None:
            return [Choice(self.index, whole.text, whole.finish, whole.logprobs)]
        return [Choice(self.index, "", None, whole.logprobs, whole.tool_calls),
                Choice(self.index, finish=whole.finish)]

    def final(self) -> Choice:
        """The whole choice a stream added up to (for the response cache)."""
        return self.whole({**self.last, "text": "".join(self.parts), "logprobs": self.all_logprobs})
