"""The language model as a text-in/text-out object: chat template, tokenizer, generation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ..build.artifacts import LLM_ID
from .chat_tokenizer import ChatTokenizer
from .detokenizer import StreamDecoder
from .generate import generate
from .model_runner import ModelRunner
from .sampling import SamplingParams


@dataclass
class Delta:
    text: str
    n_tokens: int  # tokens generated so far
    finish_reason: str | None = None  # "stop" | "length" once finished


class TextGenerator:
    model_id = LLM_ID

    def __init__(self, model_dir: str | Path, variant: str = "q4", threads: int | None = None,
                 spinning: bool = False, device: str = "auto", park_after_run: bool = False) -> None:
        self.chat = ChatTokenizer(model_dir)
        self.variant = variant
        cfg = self.chat.config
        self.runner = ModelRunner(str(Path(model_dir) / f"{variant}.onnx"), cfg["n_layers"],
                                  cfg["n_kv_heads"], cfg["hidden"] // cfg["n_heads"],
                                  threads, spinning, device, park_after_run)

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        """Text deltas as they become final; the last one carries the finish reason."""
        self.chat.check_fits(prompt_ids)
        params = replace(params, max_tokens=min(params.max_tokens,
                                                self.chat.context_length - len(prompt_ids)))
        decoder = StreamDecoder(self.chat.tokenizer, params.stop, params.stop_at_repeat)
        produced = 0
        for token in generate(self.runner, prompt_ids, params, self.chat.stop_ids):
            produced += 1
            text = decoder.push(token)
            if decoder.stopped:
                yield Delta(text, produced, "stop")
                return
            if text:
                yield Delta(text, produced)
        yield Delta(decoder.flush(), produced, "length" if produced >= params.max_tokens else "stop")

    def complete(self, prompt_ids: list[int], params: SamplingParams) -> Delta:
        """The whole answer as one Delta."""
        parts, last = [], Delta("", 0)
        for last in self.stream(prompt_ids, params):
            parts.append(last.text)
        return Delta("".join(parts), last.n_tokens, last.finish_reason)
