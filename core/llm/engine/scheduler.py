"""Which sequences run in the next step: a prefill of newcomers, or one decode step for all.

Prefill and decode alternate while both have work, so a burst of arrivals delays running
streams by at most one (chunked) prefill per token. Long prompts are prefilled in chunks.
"""

from __future__ import annotations

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
            remaining = len(seq.prompt_ids) - seq.n_cached
            chunk = min(remaining, budget)
            rows = seq.slot - candidates[0].slot + 1  # rows the contiguous slot range spans
            if seqs and rows * max(chunks + [chunk]) > budget:
                break
            seqs.append(seq)
            chunks.append(chunk)
        return Work("prefill", seqs, chunks)
