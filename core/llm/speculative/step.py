"""Speculative decoding as plain functions (after gpt-fast): one step, and a loop for one sequence.

State of a sequence between steps (what an engine keeps per sequence):
  tokens            prompt + output so far; the last one is *pending*: sampled and emitted, not
                    yet fed to the target. Invariant: target_slots.lens[slot] == len(tokens) - 1.
  slot              its row in the target's KVSlots
  drafter           a PromptLookupDrafter (stateless, shareable) or this sequence's ModelDrafter
                    (its own slot in the draft model's KVSlots; it catches up lazily)
  AdaptiveK, rng    speculation length controller; the request's random generator

`speculative_step` feeds [pending, d1..dk] to the target in ONE forward with logits at all k+1
positions, keeps the accepted prefix plus one token from the target (correction or bonus), and
rolls the target's KV back to the kept length by lowering `lens` (the draft model's KV is rolled
back lazily on its next propose). The invariant holds again afterwards, with the last returned
token pending.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..kv_slots import KVSlots
from ..model_runner import ModelRunner
from ..sampling import SamplingParams, rng_for, sample
from .acceptance import accept_greedy, accept_sampled, target_probs
from .adaptive import AdaptiveK, CostModel


class Drafter(Protocol):
    alpha_prior: float

    def propose(self, tokens: list[int], k: int, params: SamplingParams | None = None,
                rng: np.random.Generator | None = None) -> tuple[list[int], np.ndarray | None]:
        """Up to k tokens continuing `tokens`, and the q [n, V] they were drawn from (None: one-hot)."""
        ...


@dataclass
class StepResult:
    tokens: list[int]  # kept drafts, then the target's own next token: 1..k+1 tokens
    drafted: int  # draft tokens verified
    kept: int  # of which accepted (tokens == drafts[:kept] + [next])
    draft_s: float
    verify_s: float  # the target forward (a plain decode when drafted == 0)
    catchup_s: float = 0.0  # part of draft_s a model drafter spent catching up on many tokens
    draft_class: object = None  # the drafter's last_class (prompt lookup: matched n-gram length)


@dataclass
class SpecStats:
    """Counters for metrics: drafts, draft tokens, accepted tokens, acceptance, mean accepted length."""

    steps: int = 0  # target forwards after prefill
    drafts: int = 0  # steps that verified at least one draft token
    draft_tokens: int = 0
    accepted_tokens: int = 0
    emitted_tokens: int = 0  # tokens the steps produced (kept drafts + target tokens)
    draft_s: float = 0.0
    verify_s: float = 0.0
    k_hist: dict[int, int] = field(default_factory=dict)  # drafted length -> steps
    by_class: dict = field(default_factory=dict)  # draft class -> [steps, draft tokens, accepted]

    def add(self, r: StepResult) -> None:
        self.steps += 1
        self.drafts += r.drafted > 0
        self.draft_tokens += r.drafted
        self.accepted_tokens += r.kept
        self.emitted_tokens += len(r.tokens)
        self.draft_s += r.draft_s
        self.verify_s += r.verify_s
        self.k_hist[r.drafted] = self.k_hist.get(r.drafted, 0) + 1
        if r.drafted:
            c = self.by_class.setdefault(r.draft_class, [0, 0, 0])
            c[0], c[1], c[2] = c[0] + 1, c[1] + r.drafted, c[2] + r.kept

    def merge(self, other: SpecStats) -> None:
        for name in ("steps", "drafts", "draft_tokens", "accepted_tokens", "emitted_tokens",
                     "draft_s", "verify_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, n in other.k_hist.items():
            self.k_hist[k] = self.k_hist.get(k, 0) + n
        for c, counts in other.by_class.items():
            mine = self.by_class.setdefault(c, [0, 0, 0])
            mine[:] = [a + b for a, b in zip(mine, counts, strict=True)]

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Drafts accepted per drafting step (the bonus/correction token not counted)."""
        return self.accepted_tokens / self.drafts if self.drafts else 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.emitted_tokens / self.steps if self.steps else 0.0

    def as_dict(self) -> dict:
        return {"steps": self.steps, "drafts": self.drafts, "draft_tokens": self.draft_tokens,
                "accepted_tokens": self.accepted_tokens, "emitted_tokens": self.emitted_tokens,
                "acceptance_rate": round(self.acceptance_rate, 4),
                "mean_accepted_length": round(self.mean_accepted_length, 3),
                "tokens_per_step": round(self.tokens_per_step, 3),
                "draft_s": round(self.draft_s, 4), "verify_s": round(self.verify_s, 4),
                "k_hist": dict(sorted(self.k_hist.items())),
                "by_class": {str(c): {"steps": v[0], "draft_tokens": v[1], "accepted": v[2],
                                      "acceptance": round(v[2] / v[1], 3)}
                             for c, v in self.by_class.items()}}


@dataclass
class VerifyRow:
    """One sequence's part of a (possibly batched) verification forward."""

    slot: int
    pending: int  # the sequence's last token, not yet in the target's KV
    draft: list[int]  # may be empty: a plain decode step for this row
    draft_probs: np.ndarray | None  # q [len(draft), V], or None for one-hot drafts
    params: SamplingParams
    rng: np.random.Generator


def accept(draft: list[int], draft_probs: np.ndarray | None, logits: np.ndarray,
           params: SamplingParams, rng: np.random.Generator) -> tuple[int, int]:
    """(drafts kept, next token) from the target's logits [len(draft)+1, V] at [pending, *draft].

    No draft: the token `sampling.sample` picks, exactly as on the plain decode path (same rng
    use). Greedy: the longest prefix matching the target's argmax, then its argmax. Otherwise
    rejection sampling against the request's temperature/top-p distribution.
    """
    if not draft:
        return 0, sample(logits[0], params, rng)
    if params.greedy:
        return accept_greedy(draft, logits)
    return accept_sampled(draft, draft_probs, lambda i: target_probs(logits[i], params), rng)


def verify_batch(runner: ModelRunner, slots: KVSlots, lo: int, hi: int,
                 rows: list[VerifyRow]) -> list[tuple[int, int]]:
    """Verify every row's drafts in ONE target forward over slots [lo, hi) (rows may have
    different draft lengths; slots in the range without a row stay idle), accept per row, and
    roll each row's KV back to pending + kept drafts. Returns (kept, next token) per row."""
    width = 1 + max(len(r.draft) for r in rows)
    ids = np.zeros((hi - lo, width), np.int64)
    query_lens = np.zeros(hi - lo, np.int64)
    logits_idx = np.zeros((hi - lo, width), np.int64)
    base = {}
    for r in rows:
        i, n = r.slot - lo, 1 + len(r.draft)
        if int(slots.lens[r.slot]) + n > slots.capacity:
            raise ValueError(f"slot {r.slot} is full")
        base[r.slot] = int(slots.lens[r.slot])
        ids[i, :n] = [r.pending, *r.draft]
        query_lens[i] = n
        logits_idx[i, :n] = np.arange(n)
    logits = runner.forward_slots(slots, lo, hi, ids, query_lens, logits_idx)
    out = []
    for r in rows:
        n = 1 + len(r.draft)
        kept, nxt = accept(r.draft, r.draft_probs, logits[r.slot - lo, :n], r.params, r.rng)
        slots.lens[r.slot] = base[r.slot] + 1 + kept  # roll back the rejected drafts' KV
        out.append((kept, nxt))
    return out


def speculative_step(runner: ModelRunner, slots: KVSlots, slot: int, tokens: list[int],
                     drafter: Drafter | None, k: int | AdaptiveK, params: SamplingParams,
                     rng: np.random.Generator, max_draft: int | None = None) -> StepResult:
    """Draft up to k tokens, verify them in one target forward, keep what the target accepts.

    `tokens` is the sequence with its pending token last; slots.lens[slot] must be len(tokens)-1.
    k: a fixed number of drafts, or the sequence's AdaptiveK (chooses k, learns from the result;
    a drafter that `classifies` its drafts is handed `choose=adaptive.next_k` and asks it, per
    class, once it knows the class: prompt lookup after matching, before running a model).
    max_draft: a further cap (e.g. tokens left before max_tokens, minus one).
    k = 0 (or no drafter, or an empty draft) is a plain decode step: one token, sampled exactly
    as the non-speculative path samples it.
    """
    base = int(slots.lens[slot])
    if base != len(tokens) - 1:
        raise ValueError(f"slot holds {base} tokens; expected len(tokens) - 1 = {len(tokens) - 1}")
    adaptive = k if isinstance(k, AdaptiveK) else None
    per_class = adaptive is not None and getattr(drafter, "classifies", False)
    want = adaptive.k_max if per_class else (adaptive.next_k() if adaptive else int(k))
    cap = slots.capacity - base - 1 if max_draft is None else min(max_draft, slots.capacity - base - 1)
    want = max(0, min(want, cap))
    start = time.perf_counter()
    if not want or drafter is None:
        draft, q = [], None
    elif per_class:  # the drafter classifies first, then asks how many of that class to draft
        draft, q = drafter.propose(tokens, want, params, rng, choose=adaptive.next_k)
    else:
        draft, q = drafter.propose(tokens, want, params, rng)
    cls = getattr(drafter, "last_class", None) if draft else None
    draft = [int(t) for t in draft[:want]]
    q = None if q is None else q[: len(draft)]
    drafted_at = time.perf_counter()
    [(kept, nxt)] = verify_batch(runner, slots, slot, slot + 1,
                                 [VerifyRow(slot, tokens[-1], draft, q, params, rng)])
    verified_at = time.perf_counter()
    if adaptive is not None:
        adaptive.update(len(draft), kept, cls if per_class else None)
    catchup = getattr(drafter, "last_catchup_s", 0.0) if draft else 0.0
    return StepResult(draft[:kept] + [nxt], len(draft), kept, drafted_at - start,
                      verified_at - drafted_at, catchup, cls)


def observe(costs: CostModel, result: StepResult) -> None:
    """Feed one step's timings into the pair's cost model."""
    costs.observe(result.drafted, result.draft_s, result.verify_s, result.catchup_s,
                  result.draft_class)


def speculative_generate(runner: ModelRunner, prompt: list[int], params: SamplingParams,
                         stop_ids: set[int], drafter: Drafter | None = None,
                         k: int | AdaptiveK = 4, costs: CostModel | None = None,
                         stats: SpecStats | None = None) -> Iterator[int]:
    """Yield new token ids until max_tokens or a stop token (not yielded), like generate.generate.

    k: a fixed speculation length, or this sequence's AdaptiveK (built over `costs`).
    drafter None or k == 0: plain decoding through the same slot path (the baseline).
    """
    rng = rng_for(params.seed)
    adaptive = k if isinstance(k, AdaptiveK) else None
    k_max = adaptive.k_max if adaptive else int(k)
    costs = costs if costs is not None else (adaptive.costs if adaptive else None)
    slots = runner.make_slots(1, len(prompt) + params.max_tokens + k_max + 2)
    n = len(prompt)
    logits = runner.forward_slots(slots, 0, 1, np.array([prompt]), np.array([n]), np.array([[n - 1]]))
    tokens = list(prompt) + [sample(logits[0, 0], params, rng)]
    fresh = tokens[-1:]
    produced = 0
    while True:
        for token in fresh:
            if token in stop_ids and not params.ignore_eos:
                return
            yield token
            produced += 1
            if produced == params.max_tokens:
                return
        result = speculative_step(runner, slots, 0, tokens, drafter, k, params, rng,
                                  max_draft=params.max_tokens - produced - 1)  # drafts past it: waste
        if costs is not None:
            observe(costs, result)
        if stats is not None:
            stats.add(result)
        tokens.extend(result.tokens)
        fresh = result.tokens
