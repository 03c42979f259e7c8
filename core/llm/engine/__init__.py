"""Continuous batching: sequences join the running decode batch at the next step."""

from .admission import DeadlineExceeded, Overloaded
from .engine import EngineConfig, LLMEngine
from .sequence import Sequence

__all__ = ["DeadlineExceeded", "EngineConfig", "LLMEngine", "Overloaded", "Sequence"]
