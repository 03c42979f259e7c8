"""Drafting with a cheaper model (e.g. the q4 build drafting for the fp32 target).

The drafter owns one slot of its own KVSlots and remembers which tokens that slot's KV holds
(`cached`). Each `propose` first rolls the slot back to the longest prefix those tokens share with
the sequence (rejected drafts drop out: lowering `lens`, nothing copied), feeds the tokens it has
not seen yet in one forward (the prompt on the first call; afterwards the target's correction or
bonus token, plus the last draft when all were accepted), then decodes k-1 more tokens one at a
time. Greedy drafts for greedy requests; for sampled requests each draft is drawn from q, the
draft's distribution under the request's temperature/top-p, and q is returned for rejection
sampling.
"""

from __future__ import annotations

import time

import numpy as np

from ..kv_slots import KVSlots
from ..model_runner import ModelRunner
from ..sampling import SamplingParams
from .acceptance import draw, target_probs


class ModelDrafter:
    alpha_prior = 0.85  # acceptance assumed before any is measured
    classifies = False  # one class of drafts: k is chosen before drafting (drafting costs)

    def __init__(self, runner: ModelRunner, slots: KVSlots | None = None, slot: int = 0,
                 capacity: int = 4096) -> None:
        """Uses `slot` of `slots` (an engine can keep one KVSlots of the draft model beside the
        target's and give each sequence the same slot index in both); default: a private slot."""
        self.runner = runner
        self.slots = slots or runner.make_slots(1, capacity)
        self.slot = slot
        self.cached: list[int] = []  # tokens whose KV is in the slot, in order
        self.tokens_fed = 0  # draft-model tokens run (catch-up + drafting), for metrics
        self.last_catchup_s = 0.0  # seconds of the last propose's first forward if it fed > 2 tokens

    def reset(self) -> None:
        """Forget the slot's contents (the slot is given to another sequence)."""
        self.cached = []
        self.slots.lens[self.slot] = 0

    def _sync(self, tokens: list[int]) -> int:
        """Roll back to the longest prefix shared with `tokens`, keeping >= 1 token to feed."""
        n = min(len(self.cached), len(tokens) - 1)
        if self.cached[:n] != tokens[:n]:
            n = next(i for i, (a, b) in enumerate(zip(self.cached, tokens, strict=False)) if a != b)
        del self.cached[n:]
        self.slots.lens[self.slot] = n
        return n

    def _forward(self, new: list[int]) -> np.ndarray:
        s = self.slot
        if int(self.slots.lens[s]) + len(new) > self.slots.capacity:
            raise ValueError("draft KV slot is full")
        logits = self.runner.forward_slots(self.slots, s, s + 1, np.array([new]), np.array([len(new)]),
                                           np.array([[len(new) - 1]]))
        self.cached.extend(new)
        self.tokens_fed += len(new)
        return logits[0, 0]

    def propose(self, tokens: list[int], k: int, params: SamplingParams | None = None,
                rng: np.random.Generator | None = None) -> tuple[list[int], np.ndarray | None]:
        """k draft tokens continuing `tokens`; their q [k, V] when sampled, None when greedy."""
        if k < 1:
            return [], None
        k = min(k, self.slots.capacity - len(tokens))
        sampled = params is not None and not params.greedy
        if sampled and rng is None:
            raise ValueError("sampled drafts need an rng")
        n = self._sync(tokens)
        start = time.perf_counter()
        logits = self._forward(tokens[n:])
        # Steady state feeds 1-2 tokens here; more means catching up (prompt, or speculation was
        # off): a one-off cost the cost model should not count per draft token.
        self.last_catchup_s = time.perf_counter() - start if len(tokens) - n > 2 else 0.0
        drafts: list[int] = []
        qs: list[np.ndarray] = []
        for i in range(k):
            if sampled:
                q = target_probs(logits, params)
                qs.append(q)
                drafts.append(draw(q, rng))
            else:
                drafts.append(int(np.argmax(logits)))
            if i + 1 < k:
                logits = self._forward([drafts[-1]])
        return drafts, (np.stack(qs) if sampled else None)


def propose_batch(drafters: list[ModelDrafter], tokens: list[list[int]], ks: list[int],
                  params: list[SamplingParams] | None = None,
                  rngs: list[np.random.Generator] | None = None,
                  ) -> list[tuple[list[int], np.ndarray | None]]:
    """`propose` for several sequences at once: one draft-model forward per draft position over
    the drafters' slot range (catch-up tokens first; rows whose k is done sit idle), instead of
    one per sequence and position. The drafters must share one runner and one KVSlots.

    Drafts may differ from one-at-a-time `propose` in the last float bits (batched kernels);
    harmless, since the target's verification decides what is kept.
    """
    first = drafters[0]
    runner, slots = first.runner, first.slots
    if any(d.runner is not runner or d.slots is not slots for d in drafters):
        raise ValueError("batched drafting needs one runner and one KVSlots for every drafter")
    params = params or [None] * len(drafters)
    rngs = rngs or [None] * len(drafters)
    lo, hi = min(d.slot for d in drafters), max(d.slot for d in drafters) + 1
    ks = [max(0, min(k, slots.capacity - len(t))) for k, t in zip(ks, tokens, strict=True)]
    feed = [t[d._sync(t):] if k else [] for d, t, k in zip(drafters, tokens, ks, strict=True)]
    drafts: list[list[int]] = [[] for _ in drafters]
    qs: list[list[np.ndarray]] = [[] for _ in drafters]
    for position in range(max(ks, default=0)):
        active = [i for i, k in enumerate(ks) if k > position]
        width = max(len(feed[i]) for i in active)
        ids = np.zeros((hi - lo, width), np.int64)
        query_lens = np.zeros(hi - lo, np.int64)
        logits_idx = np.zeros((hi - lo, 1), np.int64)
        for i in active:
            row, new = drafters[i].slot - lo, feed[i]
            ids[row, :len(new)] = new
            query_lens[row] = len(new)
            logits_idx[row, 0] = len(new) - 1
        logits = runner.forward_slots(slots, lo, hi, ids, query_lens, logits_idx)
        for i in active:
            d, p = drafters[i], params[i]
            d.cached.extend(feed[i])
            d.tokens_fed += len(feed[i])
            row_logits = logits[d.slot - lo, 0]
            if p is not None and not p.greedy:
                q = target_probs(row_logits, p)
                qs[i].append(q)
                drafts[i].append(draw(q, rngs[i]))
            else:
                drafts[i].append(int(np.argmax(row_logits)))
            feed[i] = [drafts[i][-1]]
    for d in drafters:
        d.last_catchup_s = 0.0
    return [(dr, np.stack(q) if q else None) for dr, q in zip(drafts, qs, strict=True)]
