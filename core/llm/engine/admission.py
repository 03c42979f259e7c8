"""Admission by expected wait: refuse at once what would wait too long for its first token.

The engine knows its queue (prompt tokens still to prefill, tokens still to decode for every
running and waiting sequence) and measures its own speed (EWMAs of prefill tokens/s and of the
decode step time). From both it estimates when a new request would get its first token:
slots free as running sequences finish; each waiting sequence ahead takes the earliest free
slot and holds it for its max_tokens; the new one takes the next, and its first token follows
the prefill of every prompt ahead of it plus its own (prefill and decode steps alternate).
max_tokens is an upper bound of what a sequence decodes, so the estimate errs on the long side:
an accepted request starts within the limit; a refused one is told when to come back.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

# Until the engine has measured itself: a small model on a few CPU cores (replaced within a
# few steps: the EWMAs weigh the latest step by ALPHA).
PRIOR_PREFILL_TOK_S = 400.0
PRIOR_DECODE_STEP_S = 0.05
ALPHA = 0.2


class Overloaded(RuntimeError):
    """Refused before it was queued: the caller should retry after `retry_after_s` (HTTP 503)."""

    def __init__(self, message: str, retry_after_s: float = 1.0, reason: str = "queue_full") -> None:
        super().__init__(message)
        self.retry_after_s, self.reason = retry_after_s, reason

    def __reduce__(self):  # survives pickling across Ray actors with its fields
        return (Overloaded, (str(self), self.retry_after_s, self.reason))


class Throughput:
    """What the engine measured of itself: an EWMA of prefill tokens/s, and the decode step time
    as a function of the batch size, t(b) = base + per_row * b, fitted by least squares over
    recent steps (older ones fade by DECAY per step). A burst is admitted while the batch is
    still small: the step time it will run at is the larger batch's, not the last step's."""

    DECAY = 0.98

    def __init__(self) -> None:
        self.prefill_tok_s = PRIOR_PREFILL_TOK_S
        self.decode_step_s = PRIOR_DECODE_STEP_S  # EWMA of the steps as they came (operators)
        # exponentially weighted sums for the fit: weight, b, t, b^2, b*t
        self._w = self._b = self._t = self._bb = self._bt = 0.0

    def observe(self, kind: str, tokens: int, seconds: float) -> None:
        """tokens: prompt tokens (prefill) or rows (decode) in one step."""
        if seconds <= 0 or tokens <= 0:
            return
        if kind == "prefill":
            self.prefill_tok_s += ALPHA * (tokens / seconds - self.prefill_tok_s)
            return
        self.decode_step_s += ALPHA * (seconds - self.decode_step_s)
        d = self.DECAY
        self._w = d * self._w + 1
        self._b = d * self._b + tokens
        self._t = d * self._t + seconds
        self._bb = d * self._bb + tokens * tokens
        self._bt = d * self._bt + tokens * seconds

    def step_s(self, batch: int) -> float:
        """Expected seconds of one decode step of `batch` rows."""
        if self._w == 0:
            return self.decode_step_s
        mean_b, mean_t = self._b / self._w, self._t / self._w
        var_b = self._bb / self._w - mean_b * mean_b
        if var_b < 0.25:  # (nearly) one batch size seen: no slope to fit
            return mean_t
        per_row = max(0.0, (self._bt / self._w - mean_b * mean_t) / var_b)
        return max(mean_t + per_row * (batch - mean_b), 0.25 * mean_t)


@dataclass(frozen=True)
class Pending:
    """What one sequence still costs the engine: prompt tokens to prefill, tokens to decode."""

    prefill: int
    decode: int


@dataclass
class QueueState:
    """Where a new request would land: when each slot frees (decode steps from now, a min-heap),
    the prompt tokens to prefill before its own, and how many sequences hold or wait for a slot.
    The engine builds it from its queue; `load()` ships it so the ingress can add the requests it
    sent since (`push`) and compute the same wait the engine would."""

    free_at: list[int]
    prefill: int
    queued: int

    def push(self, seq: Pending) -> None:
        """A sequence joins the queue: it takes the earliest free slot and holds it."""
        start = heapq.heappop(self.free_at) if self.free_at else 0
        heapq.heappush(self.free_at, start + seq.decode)
        self.prefill += seq.prefill
        self.queued += 1

    def wait(self, prompt_tokens: int, n_slots: int, step_s: Callable[[int], float],
             prefill_tok_s: float) -> float:
        """Seconds until the first token of a new request with `prompt_tokens`."""
        steps = self.free_at[0] if self.free_at else 0
        batch = min(n_slots, self.queued + 1)  # the batch the wait runs at
        return steps * step_s(batch) + (self.prefill + prompt_tokens) / prefill_tok_s


def queue_state(running: list[Pending], ahead: list[Pending], n_slots: int) -> QueueState:
    """running: sequences holding a slot; ahead: waiting sequences admitted before a new one."""
    free_at = [p.decode for p in running] + [0] * (n_slots - len(running))
    heapq.heapify(free_at)
    state = QueueState(free_at, sum(p.prefill for p in running), len(running))
    for seq in ahead:
        state.push(seq)
    return state


def expected_wait(running: list[Pending], ahead: list[Pending], n_slots: int, prompt_tokens: int,
                  speed: Throughput) -> float:
    """Seconds until a new request with `prompt_tokens` gets its first token."""
    return queue_state(running, ahead, n_slots).wait(prompt_tokens, n_slots, speed.step_s,
                                                     speed.prefill_tok_s)


def retry_after_s(expected_s: float, limit_s: float) -> int:
    """Whole seconds until the queue should have drained below the limit (1..60)."""
    return int(min(60, max(1, math.ceil(expected_s - limit_s))))


class DeadlineExceeded(RuntimeError):
    """The request's deadline (x-request-timeout) passed before it finished (HTTP 504)."""
