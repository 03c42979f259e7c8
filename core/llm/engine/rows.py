"""Picking one row's next token in a batch: the row's logits processing (bias, penalties, its
grammar's mask), sampling, and the bookkeeping that follows (counts, logprobs, grammar state)."""

from __future__ import annotations

import numpy as np

from ..sampling import logprobs_of, process_logits, sample
from .sequence import Sequence


def pick_token(seq: Sequence, logits: np.ndarray, allowed: np.ndarray | None,
               stop_ids: set[int]) -> int:
    """The row's next token. allowed: the grammar's mask for this step (computed beforehand)."""
    params = seq.params
    if params.plain:
        return sample(logits, params, seq.rng)
    if seq.constraint is not None and allowed is None:
        allowed = seq.constraint.allowed()
    processed = process_logits(logits, params, seq.counts, allowed)
    if allowed is not None and not params.greedy:
        # Sample among the allowed tokens only (the same distribution): where the grammar leaves a
        # few choices this skips a softmax and a weighted draw over the whole vocabulary.
        ids = np.flatnonzero(allowed)
        token = int(ids[sample(processed[ids], params, seq.rng)])
    else:
        token = sample(processed, params, seq.rng)
    if params.logprobs is not None:
        seq.last_logprob = logprobs_of(processed, params, token, params.logprobs)
    if token not in stop_ids:
        seq.counts[token] = seq.counts.get(token, 0) + 1
        if seq.constraint is not None:
            seq.constraint.advance(token)
    return token
