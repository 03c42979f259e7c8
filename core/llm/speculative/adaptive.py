"""How many tokens to draft: chosen from the measured acceptance and the measured costs.

With per-token acceptance rate a (drafts kept independently with probability a), k drafts give
E(k) = (1 - a^(k+1)) / (1 - a) tokens per target forward (Leviathan et al. 2023, eq. 1), for a
step costing k draft tokens plus one target forward over k+1 tokens. Plain decoding gives 1 token
per target forward of 1 token. Costs are kept relative to that plain step (`CostModel`): the
ratios are properties of the hardware and the model pair and survive changes of load (another
process taking the cores slows draft and target alike), where absolute seconds do not.
`AdaptiveK` picks the k in [0, k_max] with the most tokens per unit of time; k = 0 is plain
decoding (speculation off).

Costs are shared by every sequence of a model pair (one `CostModel`, updated from every step);
acceptance belongs to the sequence (one `AdaptiveK` each). While off, a sequence probes with a
speculative step now and then (exponential back-off) to learn whether its acceptance has risen,
e.g. when the answer starts quoting its prompt.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class CostModel:
    """verify[k]: seconds of a target forward over k+1 tokens / seconds of one over 1 token.
    draft_ratio: seconds per drafted token / seconds of a 1-token target forward (draft_ratios:
    per draft class, where a drafter's classes differ).

    These are priors (from `calibrate`, a micro-benchmark, or given); the model also learns
    online from the steps: verify ratios from a plain step and a verifying step close together in
    time, the draft ratio from each step's draft and verify times (same moment, same load). Each
    estimate is the median of the prior (counted `prior_weight` times) and the last `window`
    observations: one forward slowed 5x by another process must not switch speculation off."""

    verify: dict[int, float] = field(default_factory=lambda: {0: 1.0})
    draft_ratio: float | None = None
    draft_ratios: dict = field(default_factory=dict)
    verify_slope_prior: float = 0.05  # extra cost per verified token before anything is measured
    window: int = 32
    prior_weight: int = 4
    pair_window_s: float = 1.0  # a plain and a verify step this close in time are compared
    _verify_obs: dict = field(default_factory=dict)  # k -> deque of observed ratios
    _draft_obs: dict = field(default_factory=dict)  # class -> deque of observed ratios
    _points: dict | None = None  # cache of the non-decreasing verify points
    _last_decode: tuple[float, float] | None = None  # (when, seconds)
    _last_verify: tuple[float, int, float] | None = None  # (when, k, seconds)

    def _estimate(self, prior: float | None, obs) -> float | None:
        if not obs:
            return prior
        values = list(obs) + ([prior] * self.prior_weight if prior is not None else [])
        return float(np.median(values))

    def _verify_points(self) -> dict[int, float]:
        if self._points is None:
            keys = set(self.verify) | set(self._verify_obs)
            self._points = _non_decreasing({k: self._estimate(self.verify.get(k), self._verify_obs.get(k))
                                            for k in keys})
        return self._points

    def verify_ratio(self, k: int) -> float:
        """Relative cost of verifying k drafts: measured points made non-decreasing in k (a
        wider forward never costs less; noise says otherwise), interpolated between them."""
        points = self._verify_points()
        if k in points:
            return points[k]
        known = sorted(points)
        lower = max(j for j in known if j < k)
        higher = [j for j in known if j > k]
        if higher:  # interpolate between measured widths
            upper = higher[0]
            f = (k - lower) / (upper - lower)
            return points[lower] * (1 - f) + points[upper] * f
        if lower >= 1:  # extrapolate with the slope of the measured part
            slope = (points[lower] - 1.0) / lower
            return points[lower] + (k - lower) * max(slope, 0.0)
        return 1.0 + k * self.verify_slope_prior

    def draft_ratio_for(self, c: object = None) -> float | None:
        prior = self.draft_ratios.get(c, self.draft_ratio)
        return self._estimate(prior, self._draft_obs.get(c))

    @property
    def known(self) -> bool:
        return self.draft_ratio is not None or bool(self.draft_ratios) or bool(self._draft_obs)

    def known_for(self, c: object = None) -> bool:
        return self.draft_ratio_for(c) is not None

    def step_ratio(self, k: int, c: object = None) -> float:
        """Cost of a step with k drafts (of class c), in plain decode steps."""
        if k == 0:
            return 1.0
        return k * (self.draft_ratio_for(c) or 0.0) + self.verify_ratio(k)

    def _add(self, table: dict, key: object, value: float) -> None:
        if key not in table:
            table[key] = deque(maxlen=self.window)
        table[key].append(value)

    def observe(self, drafted: int, draft_s: float, verify_s: float, catchup_s: float = 0.0,
                c: object = None) -> None:
        """One step's timings. catchup_s: part of draft_s the drafter spent on a long catch-up
        (after speculation was off), excluded from the per-token draft cost. c: the draft class."""
        now = time.monotonic()
        if drafted == 0:
            self._last_decode = (now, verify_s)
            if self._last_verify and now - self._last_verify[0] < self.pair_window_s:
                _, k, v = self._last_verify
                self._add(self._verify_obs, k, max(v / verify_s, 1.0))
                self._points = None
            return
        self._last_verify = (now, drafted, verify_s)
        if self._last_decode and now - self._last_decode[0] < self.pair_window_s:
            self._add(self._verify_obs, drafted, max(verify_s / self._last_decode[1], 1.0))
            self._points = None
        decode_now = verify_s / self.verify_ratio(drafted)  # a plain step's cost at this moment
        if catchup_s > 0:
            if drafted < 2:
                return
            per_token = (draft_s - catchup_s) / (drafted - 1)
        else:
            per_token = draft_s / drafted
        self._add(self._draft_obs, c, per_token / decode_now)

    @classmethod
    def calibrate(cls, runner, k_max: int, drafter=None, context: int = 128, repeats: int = 5,
                  widths: list[int] | None = None) -> CostModel:
        """Time target forwards over 1..k_max+1 tokens (and one draft token of a model drafter)
        after `context` tokens of KV. Each round times a 1-token forward right before each wider
        one (and before the draft forward), and the ratio is taken within the pair; the estimate
        is the median over rounds: load from other processes changes between rounds, not within
        a pair, so it cancels out of the ratios."""

        widths = sorted(set(widths or range(2, k_max + 2)) - {1})
        slots = runner.make_slots(1, context + max(widths, default=1) + 1)
        ids = list(range(1000, 1000 + context + max(widths, default=1)))
        runner.forward_slots(slots, 0, 1, np.array([ids[:context]]), np.array([context]),
                             np.array([[context - 1]]))

        def target(w: int) -> float:
            slots.lens[0] = context
            start = time.perf_counter()
            runner.forward_slots(slots, 0, 1, np.array([ids[context:context + w]]), np.array([w]),
                                 np.arange(w)[None])
            return time.perf_counter() - start

        draft_runner = getattr(drafter, "runner", None)
        if draft_runner is not None:
            dslots = draft_runner.make_slots(1, context + 8)
            draft_runner.forward_slots(dslots, 0, 1, np.array([ids[:context]]), np.array([context]),
                                       np.array([[context - 1]]))

        def draft(n: int = 4) -> float:  # as when drafting: n one-token forwards in a row
            dslots.lens[0] = context
            start = time.perf_counter()
            for _ in range(n):
                draft_runner.forward_slots(dslots, 0, 1, np.array([[5]]), np.array([1]), np.array([[0]]))
            return (time.perf_counter() - start) / n

        ratios: dict[int, list[float]] = {w: [] for w in widths}
        draft_ratios: list[float] = []
        for rep in range(repeats + 1):
            for w in widths:
                one, wide = target(1), target(w)
                if rep:  # the first round warms up
                    ratios[w].append(wide / one)
            if draft_runner is not None:
                one, d = target(1), draft()
                if rep:
                    draft_ratios.append(d / one)
        model = cls()
        model.verify = {0: 1.0} | {w - 1: max(float(np.median(r)), 1.0) for w, r in ratios.items()}
        if draft_ratios:
            model.draft_ratio = float(np.median(draft_ratios))
        return model


def _non_decreasing(points: dict[int, float]) -> dict[int, float]:
    """Least-squares non-decreasing fit (pool adjacent violators) of points k -> value."""
    keys = sorted(points)
    blocks: list[list[float]] = []  # [sum, count]
    for k in keys:
        blocks.append([points[k], 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, n = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += n
    values = [b[0] / b[1] for b in blocks for _ in range(int(b[1]))]
    return dict(zip(keys, values, strict=True))


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens per target forward with k drafts at per-token acceptance alpha (bonus included)."""
    if alpha >= 1.0:
        return k + 1.0
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


class AdaptiveK:
    """Per-sequence speculation length. `next_k()` before drafting, `update(drafted, kept)` after.

    Acceptance can be kept per draft class: a drafter that knows how good a draft is before it is
    verified (prompt lookup: the length of the n-gram it matched) sets `last_class`; the step then
    drafts up to k_max and keeps `next_k(that class)` tokens. Measured here on this model's
    outputs: after a 1-gram match ~30 % of draft tokens are accepted, after a 4-gram match ~80 %.
    """

    def __init__(self, costs: CostModel, k_max: int = 8, k_init: int = 4,
                 alpha_prior: float | dict = 0.7, prior_weight: float = 4.0, decay: float = 0.8,
                 probe_every: int = 8, max_probe_every: int = 64) -> None:
        self.costs, self.k_max, self.k_init = costs, k_max, min(k_init, k_max)
        self.alpha_prior, self.prior_weight, self.decay = alpha_prior, prior_weight, decay
        self.min_probe_every, self.max_probe_every = probe_every, max_probe_every
        # per class: decayed counts of kept drafts and of trials (kept + first rejections)
        self._counts: dict[object, list[float]] = {}
        self._probe: dict[object, list[int]] = {}  # per class: [steps off since last probe, interval]

    def _prior(self, c: object) -> float:
        if isinstance(self.alpha_prior, dict):
            return self.alpha_prior.get(c, self.alpha_prior.get(None, 0.5))
        return self.alpha_prior

    def _count(self, c: object) -> list[float]:
        if c not in self._counts:
            self._counts[c] = [self._prior(c) * self.prior_weight, self.prior_weight]
        return self._counts[c]

    def alpha(self, c: object = None) -> float:
        kept, trials = self._count(c)
        return kept / trials

    def speedup(self, k: int, c: object = None) -> float:
        """Expected tokens per unit time with k drafts, relative to plain decoding."""
        return expected_tokens(self.alpha(c), k) / self.costs.step_ratio(k, c)

    def best_k(self, c: object = None) -> int:
        if not self.costs.known_for(c):
            return self.k_init  # the first speculative step measures the draft cost
        return max(range(self.k_max + 1), key=lambda k: self.speedup(k, c))

    def next_k(self, c: object = None) -> int:
        k = self.best_k(c)
        probe = self._probe.setdefault(c, [0, self.min_probe_every])
        if k > 0:
            probe[:] = [0, self.min_probe_every]
            return k
        probe[0] += 1
        if probe[0] >= probe[1]:  # off: re-measure acceptance now and then, backing off
            probe[:] = [0, min(2 * probe[1], self.max_probe_every)]
            return max(1, self.k_init)
        return 0

    def update(self, drafted: int, kept: int, c: object = None) -> None:
        """After a step that verified `drafted` drafts and kept the first `kept` of them."""
        if drafted == 0:
            return
        count = self._count(c)
        count[0] = self.decay * count[0] + kept
        count[1] = self.decay * count[1] + kept + (1 if kept < drafted else 0)
