"""Sampling parameters and next-token selection (greedy, temperature, top-p, seeded)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be in [0, 2]")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def rng_for(seed: int | None) -> np.random.Generator:
    """The request's random generator. OpenAI seeds are any int64: numpy wants a non-negative
    one, so negative seeds are folded into [0, 2**64) (still one stream per seed)."""
    return np.random.default_rng(None if seed is None else seed % 2**64)


def token_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The distribution [V] (float64) a request samples from: temperature, then top-p over the
    sorted probabilities; one-hot on the argmax for greedy requests. Speculative decoding
    verifies against exactly this distribution."""
    if params.greedy:
        probs = np.zeros(logits.shape[-1])
        probs[int(np.argmax(logits))] = 1.0
        return probs
    # Shift before dividing: at a tiny temperature (any float > 0 is valid) logits / T overflow
    # to inf and inf - inf is NaN; shifted, the top logit stays 0 and the rest go to -inf.
    z = (logits.astype(np.float64) - logits.max()) / params.temperature
    probs = np.exp(z)
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return probs


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Pick the next token from one row of logits [V]."""
    if params.greedy:
        return int(np.argmax(logits))
    probs = token_probs(logits, params)
    return int(rng.choice(len(probs), p=probs))
