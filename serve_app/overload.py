"""Early refusals: a recent view of the LLM engine's queue, kept by the Ingress (or Serve's proxy).

A refusal decided by the engine costs a hop, the LLM replica's event loop (busy streaming
tokens) and, before that, tokenization and the cache lookup here. The ingress polls the engine's
`load()` (a few hundred bytes, every POLL_S while requests flow): per tenant, the queue a new
request would join (when each slot frees, prompt tokens ahead) and the engine's speeds. A request
is refused at once when its tenant would already wait longer than `max_queue_wait_s` before its
own prompt is even counted. Requests admitted since the view was taken join that queue here the
way the engine would queue them (`QueueState.push`): a burst arriving within one poll is refused
here, not one by one at the engine; the same arithmetic as the engine's, so a refusal made here
is one the engine would make. The view may be up to STALE_S old; past that it is not trusted.
When there is no fresh view (the first request after an idle spell), a request waits for the
poll in flight (a few ms, at most FIRST_VIEW_WAIT_S) rather than pass unseen: a cold burst of
200 used to reach the engine whole and be refused there at 2-3 s.

With several LLM replicas (configs/gpu.yaml: 4), each replica's snapshot names it; a poll reads
as many replicas as it has seen (Serve's router spreads the calls; one call while there is one),
and the wait is computed over the pool: every replica's slots and queue, the batch step at the
per-replica batch, the prefill speeds added, as if the router balanced perfectly. One replica's
view taken for the whole deployment refused half of a 64-stream load that 4 x 32 slots held
(measured on an H100). A replica not read for REPLICA_STALE_S leaves the pool (scaled down).
The engine of the replica a request lands on stays the authority.

The check is made by a Gate (gate.py) from the headers alone (key -> tenant, its quota, this
view), in an ASGI middleware (early_refusal.py) in the Ingress replica or in Serve's proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from dataclasses import dataclass

from ray.serve import metrics
from ray.serve.handle import DeploymentHandle

from core.llm.engine.admission import Pending, QueueState, retry_after_s

from .errors import APIError

POLL_S = 0.25
STALE_S = 1.0  # an older view is not trusted to refuse
IDLE_S = 10.0  # stop polling after this long without a request
FIRST_VIEW_WAIT_S = 0.5  # how long a request waits for a view when there is none
RESERVATION_TTL_S = 3.0  # an admitted request the engine has surely seen (or that never went)
REPLICA_STALE_S = 3.0  # a replica's snapshot older than this leaves the pool
MAX_PROBES = 8  # load() calls per poll, at most

logger = logging.getLogger("ray.serve")


class IngressMetrics:
    def __init__(self) -> None:
        self.refusals = metrics.Counter("ingress_refusals", description="requests refused, by reason",
                                        tag_keys=("reason",))
        self.refusal_s = metrics.Histogram("ingress_refusal_seconds",
                                           description="time to answer a refusal (429/503/504)",
                                           boundaries=[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2])

    def refused(self, reason: str, seconds: float) -> None:
        self.refusals.inc(tags={"reason": reason})
        self.refusal_s.observe(seconds)


@dataclass
class Reservation:
    """A request admitted here and not yet in a view: its tenant and what it will cost."""

    tenant: str
    decode: int  # max_tokens x choices
    prefill: int = 0  # prompt tokens, once tokenized
    admitted: float = 0.0
    sent_in_poll: int | None = None  # polls started before it went to the engine


class LoadView:
    def __init__(self, llm: DeploymentHandle, max_queue_wait_s: float | None) -> None:
        self.llm, self.max_wait = llm, max_queue_wait_s
        self.snapshot: dict | None = None  # the latest replica's snapshot (GET /v1/load shows it)
        self.at = 0.0
        self.replicas: dict[str, tuple[float, dict]] = {}  # replica -> (read at, its snapshot)
        self.last_request = 0.0
        self._task: asyncio.Task | None = None
        self._viewed: asyncio.Event | None = None  # set by each poll that lands
        self._polls = 0
        self._ids = itertools.count()
        self.reservations: dict[int, Reservation] = {}

    async def check(self, tenant: str, decode_tokens: int) -> int | None:
        """Raise 503 now if the engine would refuse this tenant's request anyway; otherwise
        count it (a reservation id, for `sent`/`release_unsent`). None: no view, the engine decides."""
        self.last_request = time.monotonic()
        if self.max_wait is None:
            return None
        if self._task is None or self._task.done():
            self._viewed = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._poll())
        if not self._fresh():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._viewed.wait(), FIRST_VIEW_WAIT_S)
            if not self._fresh():
                return None
        wait = self.expected_wait(tenant)
        if wait > self.max_wait:
            retry = str(retry_after_s(wait, self.max_wait))
            raise APIError(503, f"the model is at capacity: expected wait {wait:.1f}s exceeds "
                                f"{self.max_wait:g}s; retry after {retry} s", None, "overloaded",
                           "server_error", headers={"Retry-After": retry})
        rid = next(self._ids)
        self.reservations[rid] = Reservation(tenant, decode_tokens, admitted=time.monotonic())
        return rid

    def expected_wait(self, tenant: str) -> float:
        """The engines' wait for this tenant's next request, plus what was admitted here since."""
        snaps = [snap for _, snap in self.replicas.values()]  # filled by the poll that set the view
        return pooled_wait(snaps, tenant, [r for r in self.reservations.values() if r.tenant == tenant])

    def resize(self, rid: int, decode_tokens: int) -> None:
        """The body was read: max_tokens x n instead of the endpoint's default."""
        if rid in self.reservations:
            self.reservations[rid].decode = decode_tokens

    def sent(self, rid: int | None, prompt_tokens: int, decode_tokens: int) -> None:
        """The request goes to the engine now, at its real size."""
        r = self.reservations.get(rid) if rid is not None else None
        if r is not None:
            r.prefill, r.decode, r.sent_in_poll = prompt_tokens, decode_tokens, self._polls

    def forwarded(self, rid: int | None) -> None:
        """Serve's proxy sent it on to the Ingress, which tokenizes it and sends it to the engine
        within a few ms: counted until the second poll that starts after now (>= POLL_S later)."""
        r = self.reservations.get(rid) if rid is not None else None
        if r is not None:
            r.sent_in_poll = self._polls + 1

    def drop(self, rid: int | None) -> None:
        """It will not reach the engine's queue (refused there or later, a cache hit, a 400)."""
        if rid is not None:
            self.reservations.pop(rid, None)

    def release_unsent(self, rid: int | None) -> None:
        """The request is over: if it never went to the engine (a cache hit, a 400, an error),
        stop counting it."""
        r = self.reservations.get(rid) if rid is not None else None
        if r is not None and r.sent_in_poll is None:
            del self.reservations[rid]

    def _fresh(self) -> bool:
        return self.snapshot is not None and time.monotonic() - self.at <= STALE_S

    async def _poll(self) -> None:
        while time.monotonic() - self.last_request < IDLE_S:
            with contextlib.suppress(Exception):  # a failed poll leaves the view to go stale
                self._polls += 1
                polls_before = self._polls
                probes = max(1, min(MAX_PROBES, len(self.replicas)))
                snapshots = await asyncio.gather(*(self.llm.load.remote() for _ in range(probes)))
                now = time.monotonic()
                for snapshot in snapshots:
                    self.replicas[snapshot.get("replica", "")] = (now, snapshot)
                self.replicas = {r: v for r, v in self.replicas.items() if now - v[0] <= REPLICA_STALE_S}
                # what went to the engine before this poll left is in the snapshot; the rest
                # (sent since, or still being tokenized) keeps counting until a later one
                self.reservations = {
                    i: r for i, r in self.reservations.items()
                    if not (r.sent_in_poll is not None and r.sent_in_poll < polls_before)
                    and now - r.admitted < RESERVATION_TTL_S}
                self.snapshot, self.at = snapshots[-1], now
                self._viewed.set()
            await asyncio.sleep(POLL_S)
        self.snapshot, self.replicas = None, {}


def pooled_wait(snapshots: list[dict], tenant: str, admitted: list[Reservation]) -> float:
    """Seconds to the first token of the tenant's next request on a deployment whose replicas
    took these snapshots, after the requests admitted since: one queue over all their slots."""
    n = len(snapshots)
    free_at: list[int] = []
    prefill = queued = 0
    for snap in snapshots:
        q = snap["queues"].get(tenant, snap["queues"]["*"])
        free_at += q["free_at"]
        prefill, queued = prefill + q["prefill"], queued + q["queued"]
    heapq.heapify(free_at)
    state = QueueState(free_at, prefill, queued)
    for r in admitted:
        state.push(Pending(r.prefill, r.decode))
    step_s = snapshots[0]["step_s"]

    def pooled_step_s(batch: int) -> float:  # a pooled batch is spread over the n replicas
        return step_s[min(len(step_s), math.ceil(batch / n)) - 1]

    return state.wait(0, sum(s["slots"] for s in snapshots), pooled_step_s,
                      sum(s["prefill_tok_s"] for s in snapshots))
