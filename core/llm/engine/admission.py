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
    """EWMAs of what the engine measured: prefill tokens/s and seconds per decode step."""

    def __init__(self) -> None:
        self.prefill_tok_s = PRIOR_PREFILL_TOK_S
        self.decode_step_s = PRIOR_DECODE_STEP_S

    def observe(self, kind: str, tokens: int, seconds: float) -> None:
        if seconds <= 0 or tokens <= 0:
            return
        if kind == "prefill":
            self.prefill_tok_s += ALPHA * (tokens / seconds - self.prefill_tok_s)
        else:
            self.decode_step_s += ALPHA * (seconds - self.decode_step_s)


@dataclass(frozen=True)
class Pending:
    """What one sequence still costs the engine: prompt tokens to prefill, tokens to decode."""

    prefill: int
    decode: int


def expected_wait(running: list[Pending], ahead: list[Pending], n_slots: int, prompt_tokens: int,
                  speed: Throughput) -> float:
    """Seconds until a new request with `prompt_tokens` gets its first token.

    running: sequences holding a slot; ahead: waiting sequences admitted before the new one.
    """
    free_at = [p.decode for p in running] + [0] * (n_slots - len(running))  # in decode steps
    heapq.heapify(free_at)
    prefill = sum(p.prefill for p in running)
    for seq in ahead:
        start = heapq.heappop(free_at)
        heapq.heappush(free_at, start + seq.decode)
        prefill += seq.prefill
    steps = free_at[0] if free_at else 0
    return steps * speed.decode_step_s + (prefill + prompt_tokens) / speed.prefill_tok_s


def retry_after_s(expected_s: float, limit_s: float) -> int:
    """Whole seconds until the queue should have drained below the limit (1..60)."""
    return int(min(60, max(1, math.ceil(expected_s - limit_s))))


class DeadlineExceeded(RuntimeError):
    """The request's deadline (x-request-timeout) passed before it finished (HTTP 504)."""
