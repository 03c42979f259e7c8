"""One choice's engine outputs as OpenAI choices: logprobs in the endpoint's shape, and an answer
that is tool calls turned into `tool_calls` (streamed: text flows at once, a call is held until it
shows its name, then streamed as OpenAI streams one: id and name, then the arguments in pieces)."""

from __future__ import annotations

import json
import re

from .logprobs import CompletionLogprobs, TokenTexts
from .openai_format import Choice, Endpoint
from .structured import CALL_CLOSE, CALL_OPEN, new_call_id, parse_tool_calls

# The layout the tool-call grammar generates (compact JSON, name before arguments).
CALL_HEAD = re.compile(r'\s*' + re.escape(CALL_OPEN) + r'\{"name": ("(?:[^"\\]|\\.)*"), "arguments": ')
CALL_TAIL = "}" + CALL_CLOSE
_JSON = json.JSONDecoder()


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
        self.call_head: int | None = None  # where the streamed call's arguments start
        self.args_sent = 0  # chars of its arguments sent
        self.next_call = 0  # where the next call may start
        self.n_calls = 0  # calls begun
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
        calls = parse_tool_calls(out["text"], out["finish_reason"] == "length") if self.tools else None
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
        return self._call_deltas(out["finish_reason"]) if self.mode == "call" else []

    def _call_deltas(self, finish: str | None) -> list[Choice]:
        """Calls stream as OpenAI streams them: for each (its `index` in the message), a first
        delta with its id and name, then the arguments' JSON text in pieces; then the finish. The
        grammar fixes a call's layout, and its arguments end where their JSON object closes."""
        so_far, sent = "".join(self.parts), []
        while True:
            if self.call_head is None:
                if not (head := CALL_HEAD.match(so_far, self.next_call)):
                    break
                self.call_head, self.args_sent = head.end(), 0
                sent.append(Choice(self.index, tool_calls=[{
                    "index": self.n_calls, "id": new_call_id(), "type": "function",
                    "function": {"name": json.loads(head[1]), "arguments": ""}}]))
                self.n_calls += 1
            try:
                end, done = _JSON.raw_decode(so_far, self.call_head)[1], True
            except json.JSONDecodeError:
                end, done = len(so_far), False
            if piece := so_far[self.call_head + self.args_sent:end]:
                sent.append(Choice(self.index, tool_calls=[{"index": self.n_calls - 1,
                                                            "function": {"arguments": piece}}]))
                self.args_sent += len(piece)
            if not done:
                break
            self.call_head, self.next_call = None, end + len(CALL_TAIL)
        if not finish:
            return sent
        whole = self.final()
        if not self.n_calls:  # it never became a call (cut by max_tokens): send the text
            return [Choice(self.index, whole.text, whole.finish, whole.logprobs)]
        return [*sent, Choice(self.index, finish=whole.finish, logprobs=whole.logprobs)]

    def final(self) -> Choice:
        """The whole choice a stream added up to (for the response cache)."""
        return self.whole({**self.last, "text": "".join(self.parts), "logprobs": self.all_logprobs})
