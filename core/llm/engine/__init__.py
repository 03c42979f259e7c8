"""Continuous batching: sequences join the running decode batch at the next step."""

from .admission import Overloaded
from .engine import EngineConfig, LLMEngine
from .sequence import Sequence

__all__ = ["EngineConfig", "LLMEngine", "Overloaded", "Sequence"]
