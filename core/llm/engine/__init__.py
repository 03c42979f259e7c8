"""Continuous batching: sequences join the running decode batch at the next step."""

from .engine import EngineConfig, LLMEngine, Overloaded
from .sequence import Sequence

__all__ = ["EngineConfig", "LLMEngine", "Overloaded", "Sequence"]
