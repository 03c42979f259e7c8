"""The waiting queue, shared fairly between tenants (API keys): deficit round robin.

Each tenant has its own FIFO. A free slot goes to the tenant whose turn it is; a tenant's turn
lasts while its deficit (weight added each round) covers one admission, so over time each
backlogged tenant gets slots in proportion to its weight, whatever the others send. The unit
of cost is one admission (one KV slot): slots are what a flood takes from everyone else.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator

from .sequence import Sequence


class FairQueue:
    """A drop-in for the scheduler's deque: append, popleft (fair), remove, len, iteration."""

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self.weights = dict(weights or {})
        self.queues: dict[str, deque[Sequence]] = {}  # tenants with waiting sequences, in turn order
        self.deficit: dict[str, float] = {}
        self._turn: str | None = None

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, self.weights.get("*", 1.0))

    def append(self, seq: Sequence) -> None:
        if seq.tenant not in self.queues:
            self.queues[seq.tenant] = deque()  # joins at the back of the turn order
            self.deficit[seq.tenant] = 0.0
        self.queues[seq.tenant].append(seq)

    def popleft(self) -> Sequence:
        if not self.queues:
            raise IndexError("pop from an empty FairQueue")
        while True:
            tenant = next(iter(self.queues))  # the front tenant is the one whose turn it is
            if self._turn != tenant:  # its turn begins: it earns its weight
                self.deficit[tenant] += self.weight(tenant)
                self._turn = tenant
            if self.deficit[tenant] >= 1.0:
                self.deficit[tenant] -= 1.0
                queue = self.queues[tenant]
                seq = queue.popleft()
                if not queue:  # an idle tenant keeps no credit (DRR): it cannot save up a burst
                    del self.queues[tenant], self.deficit[tenant]
                    self._turn = None
                return seq
            self._turn = None  # turn over: to the back of the order
            self.queues[tenant] = self.queues.pop(tenant)

    def push_front(self, seq: Sequence) -> None:
        """Back to the head of its tenant's queue (a paused sequence resumes first)."""
        if seq.tenant not in self.queues:
            self.queues[seq.tenant] = deque()
            self.deficit[seq.tenant] = 0.0
        self.queues[seq.tenant].appendleft(seq)

    def pop_tenant(self, tenant: str) -> Sequence:
        """The head of one tenant's queue, outside the turns: a slot owed to it (its share)."""
        seq = self.queues[tenant][0]
        self.remove(seq)
        return seq

    def remove(self, seq: Sequence) -> None:
        queue = self.queues.get(seq.tenant)
        if queue is None or seq not in queue:
            raise ValueError("sequence is not waiting")
        queue.remove(seq)
        if not queue:
            del self.queues[seq.tenant], self.deficit[seq.tenant]
            if self._turn == seq.tenant:
                self._turn = None

    def count(self, tenant: str) -> int:
        queue = self.queues.get(tenant)
        return len(queue) if queue else 0

    def ahead_of_new(self, tenant: str) -> list[Sequence]:
        """The waiting sequences a new request of `tenant` would wait for: the tenant's own
        queue, and from every other tenant what its weight earns meanwhile."""
        rounds = (self.count(tenant) + 1) / self.weight(tenant)
        ahead: list[Sequence] = []
        for other, queue in self.queues.items():
            share = len(queue) if other == tenant else math.ceil(rounds * self.weight(other))
            ahead.extend(list(queue)[:share])
        return ahead

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def __bool__(self) -> bool:
        return bool(self.queues)

    def __iter__(self) -> Iterator[Sequence]:
        for queue in list(self.queues.values()):
            yield from list(queue)

    def __contains__(self, seq: object) -> bool:
        return any(seq in q for q in self.queues.values())
