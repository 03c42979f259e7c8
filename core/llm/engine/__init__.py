"""Continuous batching: sequences join the running decode batch at the next step."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .admission import DeadlineExceeded, Overloaded

if TYPE_CHECKING:
    from .engine import EngineConfig, LLMEngine
    from .sequence import Sequence

__all__ = ["DeadlineExceeded", "EngineConfig", "LLMEngine", "Overloaded", "Sequence"]

# The engine (and ONNX Runtime behind it) loads on first use: Serve's HTTP proxy imports the
# admission arithmetic for its early refusal and should not carry a model runtime for it.
_LAZY = {"EngineConfig": ".engine", "LLMEngine": ".engine", "Sequence": ".sequence"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(name)
