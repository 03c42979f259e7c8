"""Sampling parameters and next-token selection (greedy, temperature, top-p, seeded), and the
per-row logits processing before it: logit_bias, presence/frequency penalties, a grammar's mask,
and the log-probabilities OpenAI reports."""

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
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias); a dict is accepted
    logprobs: int | None = None  # alternatives reported per token (0-20); None: no logprobs
    grammar: str | None = None  # llguidance grammar the output must match (core.llm.constraint)
    # the text ending a segment (a tool call); a segment repeating an earlier one stops the output
    stop_at_repeat: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.logit_bias, dict):
            object.__setattr__(self, "logit_bias",
                               tuple(sorted((int(k), float(v)) for k, v in self.logit_bias.items())))
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError("logprobs must be in [0, 20]")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be in [0, 2]")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def plain(self) -> bool:
        """Sampling from the model's logits as they are: speculative decoding may verify it."""
        return (not self.presence_penalty and not self.frequency_penalty and not self.logit_bias
                and self.logprobs is None and self.grammar is None)


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


def process_logits(logits: np.ndarray, params: SamplingParams, counts: dict[int, int],
                   allowed: np.ndarray | None = None) -> np.ndarray:
    """One row's logits [V] after logit_bias, penalties (OpenAI's definition: minus
    count * frequency_penalty, minus presence_penalty once a token appeared) and the grammar's mask
    (allowed: bool [V]). Returns a new float32 array; the input is left alone."""
    out = logits.astype(np.float32, copy=True)
    if params.logit_bias:
        ids, bias = zip(*params.logit_bias, strict=True)
        out[list(ids)] += np.asarray(bias, np.float32)
    if counts and (params.presence_penalty or params.frequency_penalty):
        ids = np.fromiter(counts.keys(), np.int64, len(counts))
        n = np.fromiter(counts.values(), np.float32, len(counts))
        out[ids] -= n * params.frequency_penalty + params.presence_penalty
    if allowed is not None:  # the tokenizer's vocabulary may be narrower than the logits
        out[: len(allowed)][~allowed] = -np.inf
        out[len(allowed):] = -np.inf
    return out


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token's log-probability and the top alternatives, (id, logprob) best first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def logprobs_of(logits: np.ndarray, params: SamplingParams, token: int, top: int) -> TokenLogprob:
    """Log-softmax of the processed logits at the request's temperature (1 for greedy requests,
    as OpenAI and vLLM report them): the chosen token's value and the `top` best."""
    # Shift before dividing (as `distribution` does): at a tiny temperature logits / T overflow
    # to inf, and inf - inf made every value NaN (a 500 when the response was written).
    z = (logits.astype(np.float64) - logits.max()) / (params.temperature if params.temperature > 0 else 1.0)
    logp = z - np.log(np.exp(z).sum())
    best = np.argpartition(-logp, top)[:top] if 0 < top < len(logp) else np.arange(len(logp))[:top]
    best = best[np.argsort(-logp[best], kind="stable")]
    # Tokens a grammar masked out have no probability at all: they are not alternatives.
    return TokenLogprob(token, float(logp[token]),
                        tuple((int(i), float(logp[i])) for i in best if np.isfinite(logp[i])))
