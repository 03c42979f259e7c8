"""The language model as a text-in/text-out object: chat template, tokenizer, generation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jinja2
from tokenizers import Tokenizer

from ..build.artifacts import LLM_ID, build_llm
from .detokenizer import StreamDecoder
from .generate import generate
from .model_runner import ModelRunner
from .sampling import SamplingParams


class PromptTooLong(ValueError):
    """The prompt leaves no room to generate within the model's context window."""


@dataclass
class Delta:
    text: str
    finish_reason: str | None = None  # "stop" | "length" once finished


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class TextGenerator:
    model_id = LLM_ID

    def __init__(self, model_dir: str | Path, variant: str = "q4", threads: int | None = None,
                 spinning: bool = False, device: str = "auto") -> None:
        model_dir = Path(model_dir)
        self.config = json.loads((model_dir / "config.json").read_text())
        self.variant = variant
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.context_length: int = self.config["context_length"]
        self.stop_ids = set(self.config["stop_token_ids"])
        env = jinja2.Environment(undefined=jinja2.StrictUndefined)
        self._template = env.from_string(self.config["chat_template"])
        self.runner = ModelRunner(str(model_dir / f"{variant}.onnx"), self.config["n_layers"],
                                  self.config["n_kv_heads"],
                                  self.config["hidden"] // self.config["n_heads"],
                                  threads, spinning, device)

    @classmethod
    def load(cls, **kwargs) -> TextGenerator:
        return cls(build_llm(progress=lambda _: None), **kwargs)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self._template.render(messages=messages, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def check_fits(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise PromptTooLong("the prompt is empty")
        if len(prompt_ids) >= self.context_length:
            raise PromptTooLong(f"the prompt has {len(prompt_ids)} tokens; this model's context "
                                f"window is {self.context_length}")

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        """Text deltas as they become final; the last one carries the finish reason."""
        self.check_fits(prompt_ids)
        budget = min(params.max_tokens, self.context_length - len(prompt_ids))
        params = SamplingParams(**{**params.__dict__, "max_tokens": budget})
        decoder = StreamDecoder(self.tokenizer, params.stop)
        produced = 0
        for token in generate(self.runner, prompt_ids, params, self.stop_ids):
            produced += 1
            text = decoder.push(token)
            if decoder.stopped:
                yield Delta(text, "stop")
                return
            if text:
                yield Delta(text)
        yield Delta(decoder.flush(), "length" if produced >= budget else "stop")

    def complete(self, prompt_ids: list[int], params: SamplingParams) -> Completion:
        parts, reason = [], "stop"
        for delta in self.stream(prompt_ids, params):
            parts.append(delta.text)
            reason = delta.finish_reason or reason
        text = "".join(parts)
        return Completion(text, reason, len(prompt_ids), len(self.encode(text)) if text else 0)
