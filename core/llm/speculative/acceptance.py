"""Verifying k draft tokens against the target's logits: greedy and rejection sampling.

Pure numpy, no model. Rejection sampling after Leviathan et al. 2023 (Algorithm 1): draft token
d_i, drawn from the draft's distribution q_i, is kept with probability min(1, p_i(d_i)/q_i(d_i));
at the first rejection the replacement is drawn from norm(max(0, p_i - q_i)); when every draft is
kept, a bonus token is drawn from p_{k+1}. Each emitted token is then distributed exactly as p
(the target's distribution after the request's temperature/top-p), whatever q is. A deterministic
draft (prompt lookup, greedy draft model) is the case q_i = one-hot(d_i): keep d_i with
probability p_i(d_i), else draw from p_i with d_i removed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..sampling import SamplingParams, token_probs


def target_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The distribution `sampling.sample` draws from for one row of logits [V] (float64), so
    the speculative and the plain sampler target one distribution."""
    return token_probs(logits, params)


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token from a distribution [V] (inverse CDF: one uniform, no re-normalisation checks)."""
    cumulative = np.cumsum(probs)
    return int(min(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"),
                   len(probs) - 1))


def accept_greedy(draft: Sequence[int], target_logits: np.ndarray) -> tuple[int, int]:
    """(number of drafts kept, next token): the longest prefix of `draft` equal to the target's
    argmax at each position, then the target's own argmax after it (correction or bonus token).

    target_logits [len(draft)+1, V]: row i scores the token after draft[:i].
    """
    best = np.argmax(target_logits[: len(draft) + 1], axis=-1)
    n = 0
    while n < len(draft) and int(draft[n]) == int(best[n]):
        n += 1
    return n, int(best[n])


def accept_sampled(draft: Sequence[int], draft_probs: np.ndarray | None,
                   target_p: Callable[[int], np.ndarray] | np.ndarray,
                   rng: np.random.Generator) -> tuple[int, int]:
    """(number of drafts kept, next token) by rejection sampling.

    draft_probs: [len(draft), V] the q each draft was drawn from, or None for a deterministic
    (one-hot) draft. target_p: [len(draft)+1, V] or a function i -> p_i (computed lazily: a
    top-p row costs a sort of the vocabulary, and rows after a rejection are never needed).
    """
    p_at = target_p.__getitem__ if isinstance(target_p, np.ndarray) else target_p
    for i, d in enumerate(draft):
        p = p_at(i)
        q_d = 1.0 if draft_probs is None else float(draft_probs[i, d])
        if rng.random() * q_d < p[d]:  # keep with probability min(1, p(d)/q(d))
            continue
        if draft_probs is None:
            residual = p.copy()
            residual[d] = 0.0
        else:
            residual = np.maximum(p - draft_probs[i], 0.0)
        # residual sums to 0 only if p <= q everywhere, i.e. p == q, where rejection has prob 0
        return i, draw(residual if residual.sum() > 0 else p, rng)
    return len(draft), draw(p_at(len(draft)), rng)
