"""Chat template + tokenizer + context limits of the built LM: what the HTTP edge needs, no model."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
from tokenizers import Tokenizer


class PromptTooLong(ValueError):
    """The prompt leaves no room to generate within the model's context window."""


class ChatTokenizer:
    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        self._setup(json.loads((model_dir / "config.json").read_text()),
                    Tokenizer.from_file(str(model_dir / "tokenizer.json")))

    @classmethod
    def _from_parts(cls, config: dict, tokenizer_json: str) -> ChatTokenizer:
        chat = cls.__new__(cls)
        chat._setup(config, Tokenizer.from_str(tokenizer_json))
        return chat

    def __reduce__(self) -> tuple:
        """Pickled as its config and tokenizer, not a path: it travels to Serve's proxy
        (cache_front.py), which may run on a node without the model files."""
        return ChatTokenizer._from_parts, (self.config, self.tokenizer.to_str())

    def _setup(self, config: dict, tokenizer: Tokenizer) -> None:
        self.config, self.tokenizer = config, tokenizer
        self.context_length: int = self.config["context_length"]
        self.stop_ids: set[int] = set(self.config["stop_token_ids"])
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
        self._template = env.from_string(self.config["chat_template"])

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self._template.render(messages=messages, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def check_fits(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise PromptTooLong("the prompt is empty")
        if len(prompt_ids) >= self.context_length:
            raise PromptTooLong(f"the prompt has {len(prompt_ids)} tokens; this model's context "
                                f"window is {self.context_length}")
