"""Token generation for one sequence, as plain functions (after gpt-fast's generate.py)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .model_runner import KVCache, ModelRunner
from .sampling import SamplingParams, rng_for, sample


def prefill(runner: ModelRunner, tokens: list[int], kv: KVCache | None = None,
            all_logits: bool = False) -> tuple[np.ndarray, KVCache]:
    """Run the prompt (after whatever `kv` already holds); logits of the last or every position."""
    kv = kv if kv is not None else runner.empty_kv()
    n = len(tokens)
    idx = np.arange(n)[None] if all_logits else np.array([[n - 1]])
    logits, kv = runner.forward(np.array([tokens]), [n], kv, idx)
    return logits[0], kv


def decode_one_token(runner: ModelRunner, token: int, kv: KVCache) -> tuple[np.ndarray, KVCache]:
    logits, kv = runner.forward(np.array([[token]]), [1], kv, np.array([[0]]))
    return logits[0, 0], kv


def generate(runner: ModelRunner, prompt: list[int], params: SamplingParams,
             stop_ids: set[int]) -> Iterator[int]:
    """Yield new token ids until max_tokens or a stop token (which is not yielded)."""
    rng = rng_for(params.seed)
    logits, kv = prefill(runner, prompt)
    token = sample(logits[-1], params, rng)
    for produced in range(params.max_tokens):
        if token in stop_ids and not params.ignore_eos:
            return
        yield token
        if produced + 1 == params.max_tokens:
            return
        logits, kv = decode_one_token(runner, token, kv)
        token = sample(logits, params, rng)
