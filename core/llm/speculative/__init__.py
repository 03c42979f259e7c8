"""Speculative decoding (issue 7): drafters, verification, adaptive length, exactness checks.

    from core.llm.speculative import ModelDrafter, PromptLookupDrafter, speculative_generate, AdaptiveK
"""

from .acceptance import accept_greedy, accept_sampled, draw, target_probs
from .adaptive import AdaptiveK, CostModel, expected_tokens
from .model_drafter import ModelDrafter, propose_batch
from .prompt_lookup import PromptLookupDrafter
from .step import (
    Drafter,
    SpecStats,
    StepResult,
    VerifyRow,
    accept,
    observe,
    speculative_generate,
    speculative_step,
    verify_batch,
)

__all__ = ["AdaptiveK", "CostModel", "Drafter", "ModelDrafter", "PromptLookupDrafter", "SpecStats",
           "StepResult", "VerifyRow", "accept", "accept_greedy", "accept_sampled", "draw",
           "expected_tokens", "observe", "propose_batch", "speculative_generate", "speculative_step",
           "target_probs", "verify_batch"]
