"""Which sequences run in the next step: a prefill of newcomers, or one decode step for all.

Prefill and decode alternate while both have work, so a burst of arrivals delays running
streams by at most one (chunked) prefill per token. Long prompts are prefilled in chunks.

Slots are shared between tenants: while several are active (running or waiting), each is owed
floor(its weighted share) of the slots. A tenant below that with a request waiting takes a slot
at once from the tenant furthest above its share, whose newest decoding sequence is paused (its
KV goes to the prefix cache) and resumes first when that tenant's next slot frees. So a flood
that took every slot while alone cannot make a light tenant wait for its long requests to end.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from .fairness import FairQueue
from .sequence import Sequence, Status


@dataclass(frozen=True)
class Work:
    kind: str  # "prefill" | "decode"
    seqs: list[Sequence]
    chunks: list[int]  # prefill: tokens to feed per sequence; decode: 1 each


class Scheduler:
    def __init__(self, n_slots: int, max_prefill_tokens: int,
                 tenant_weights: dict[str, float] | None = None) -> None:
        self.waiting = FairQueue(tenant_weights)  # FIFO per tenant, shared by round robin
        self.active: list[Sequence] = []  # prefilling or decoding, each holding a slot
        self.n_slots = n_slots
        self.free_slots = list(range(n_slots))
        self.max_prefill_tokens = max_prefill_tokens
        self._last = "decode"

    def running(self) -> list[Sequence]:
        return [s for s in self.active if s.status is Status.DECODING]

    def release(self, seq: Sequence) -> None:
        if seq in self.active:
            self.active.remove(seq)
            self.free_slots.append(seq.slot)
            self.free_slots.sort()
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def admit(self) -> list[Sequence]:
        """Give free slots to waiting sequences (FIFO per tenant, tenants in weighted turns);
        returns the newly admitted."""
        admitted = []
        while self.waiting and self.free_slots:
            seq = self.waiting.popleft()
            seq.slot, seq.status = self.free_slots.pop(0), Status.PREFILLING
            self.active.append(seq)
            admitted.append(seq)
        return admitted

    def shares(self, newcomer: str | None = None) -> dict[str, float]:
        """Slots each active tenant is owed by weight (with `newcomer` counted as active)."""
        tenants = {s.tenant for s in self.active} | set(self.waiting.queues)
        tenants |= {newcomer} if newcomer is not None else set()
        total = sum(self.waiting.weight(t) for t in tenants)
        return {t: self.n_slots * self.waiting.weight(t) / total for t in tenants}

    def preemptions(self) -> list[tuple[Sequence, str]]:
        """(sequence to pause, tenant whose waiting head takes its slot): one per slot owed to a
        waiting tenant below its share while none is free, taken from the tenant furthest
        above its share, its newest decoding sequence. Floors make it settle: the giver stays at
        or above its share, the taker at or below, so nothing is handed back and forth."""
        if self.free_slots or len(self.waiting.queues) == 0:
            return []
        shares = self.shares()
        if len(shares) < 2:
            return []
        held = Counter(s.tenant for s in self.active)
        moves: list[tuple[Sequence, str]] = []
        for tenant in list(self.waiting.queues):
            owed = min(self.waiting.count(tenant), math.floor(shares[tenant]) - held[tenant])
            for _ in range(owed):
                givers = [t for t in held if held[t] > shares[t]]
                if not givers:
                    return moves
                giver = max(givers, key=lambda t: held[t] / shares[t])
                taken = {id(v) for v, _ in moves}
                victims = [s for s in self.active if s.tenant == giver
                           and s.status is Status.DECODING and id(s) not in taken]
                if not victims:
                    return moves
                moves.append((max(victims, key=lambda s: s.seq_id), tenant))
                held[giver] -= 1
                held[tenant] += 1
        return moves

    def hand_over(self, paused: Sequence, tenant: str) -> Sequence:
        """`paused` (its KV already saved) leaves its slot for the head of `tenant`'s queue and
        waits at the head of its own; returns the sequence now holding the slot."""
        self.active.remove(paused)
        slot, paused.slot, paused.status, paused.n_cached = paused.slot, -1, Status.WAITING, 0
        self.waiting.push_front(paused)
        seq = self.waiting.pop_tenant(tenant)
        seq.slot, seq.status = slot, Status.PREFILLING
        self.active.append(seq)
        return seq

    def entitled(self, tenant: str) -> bool:
        """A new request of `tenant` gets a slot at once: free, or handed over by a tenant above
        its share (the newcomer stays within its own)."""
        shares = self.shares(tenant)
        if len(shares) < 2:
            return False  # one tenant: the plain estimate (no one to take a slot from)
        held = Counter(s.tenant for s in self.active)
        if held[tenant] + self.waiting.count(tenant) + 1 > math.floor(shares[tenant]):
            return False
        return bool(self.free_slots) or any(held[t] > shares[t] for t in held if t != tenant)

    def next_work(self) -> Work | None:
        prefilling = sorted((s for s in self.active if s.status is Status.PREFILLING),
                            key=lambda s: s.slot)
        decoding = sorted(self.running(), key=lambda s: s.slot)
        if prefilling and (not decoding or self._last == "decode"):
            self._last = "prefill"
            return self._prefill_work(prefilling)
        if decoding:
            self._last = "decode"
            return Work("decode", decoding, [1] * len(decoding))
        return None

    def _prefill_work(self, candidates: list[Sequence]) -> Work:
        """A group whose padded size (rows x longest chunk) fits the token budget; the first
        sequence always goes, chunked to the budget."""
        budget = self.max_prefill_tokens
        seqs, chunks = [], []
        for seq in candidates:
            remaining = len(seq.all_ids) - seq.n_cached  # a resumed one re-feeds its output too
            chunk = min(remaining, budget)
            rows = seq.slot - candidates[0].slot + 1  # rows the contiguous slot range spans
            if seqs and rows * max(chunks + [chunk]) > budget:
                break
            seqs.append(seq)
            chunks.append(chunk)
        return Work("prefill", seqs, chunks)
