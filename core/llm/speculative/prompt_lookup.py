"""Model-free drafting by prompt lookup (n-gram matching over the sequence so far).

The last n tokens (n = max_n down to min_n) are looked up in the prompt + output; the tokens that
followed their most recent earlier occurrence are the draft. Free to compute (numpy over the
token ids, no model), deterministic (one-hot q), and stateless: one instance serves any number
of sequences. Pays where the output copies the input (rewrite, summarise, code edits), and
where the output repeats itself.

The matched n-gram length predicts acceptance (measured on this model's greedy outputs, chat and
rewrite prompts, 8-token drafts: per-token acceptance ~0.3 after a 1-gram match, ~0.5-0.6 after 2
or 3, ~0.8 after 4): `last_class` reports it, so AdaptiveK keeps acceptance and chooses k per
match length (e.g. drops 1-gram drafts where verifying extra tokens is dear).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..sampling import SamplingParams


class PromptLookupDrafter:
    alpha_prior = {1: 0.3, 2: 0.5, 3: 0.6, 4: 0.8, None: 0.5}  # by match length, see above
    classifies = True  # sets last_class (the matched n); takes `choose` (see propose)

    def __init__(self, max_n: int = 4, min_n: int = 1, window: int = 4096) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError("need 1 <= min_n <= max_n")
        self.max_n, self.min_n, self.window = max_n, min_n, window
        self.last_class: int | None = None  # n of the last match (None: no match)

    def propose(self, tokens: list[int], k: int, params: SamplingParams | None = None,
                rng: np.random.Generator | None = None,
                choose: Callable[[object], int] | None = None) -> tuple[list[int], None]:
        """Up to k draft tokens continuing `tokens` (fewer, or none, when nothing matches).
        choose(match length) -> how many of them to keep (AdaptiveK.next_k); default all."""
        self.last_class = None
        if k < 1 or len(tokens) < 2:
            return [], None
        ids = np.asarray(tokens[-self.window:], np.int64)
        for n in range(min(self.max_n, len(ids) - 1), self.min_n - 1, -1):
            # windows starting at 0..len-n-1: every earlier occurrence, not the suffix itself
            windows = sliding_window_view(ids[:-1], n)
            hits = np.flatnonzero((windows == ids[-n:]).all(axis=1))
            if len(hits):
                start = int(hits[-1]) + n  # most recent occurrence
                self.last_class = n
                keep = k if choose is None else min(k, choose(n))
                return ids[start:start + keep].tolist(), None
        return [], None

    def reset(self) -> None:
        """Nothing to forget (stateless); here for the drafter interface."""
