"""A draft model serving many sequences from elsewhere: the draft side of a separate placement.

When the draft runs apart from its target (another process, or other hardware: a CPU draft for
a GPU target), one call per speculative step carries the sequence's tokens and k, and returns k
drafts. `DraftServer` keeps one `ModelDrafter` (and one KV slot) per sequence key, so steady-state
calls feed only the 1-2 new tokens; slots go to new keys least recently used first. The engine
side is `RemoteDrafter`, the same `Drafter` protocol as a local drafter, so speculation, adaptive
k and the cost model treat both alike (the hop's cost shows up in the measured draft time).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..model_runner import ModelRunner
from ..sampling import SamplingParams
from .model_drafter import ModelDrafter

logger = logging.getLogger(__name__)


@dataclass
class Drafts:
    tokens: list[int]
    q: np.ndarray | None  # [k, V] the drafts were drawn from; None when greedy
    catchup_s: float  # draft seconds spent catching up on many tokens (not a per-draft cost)
    draft_s: float  # seconds the draft model worked for this call


class DraftServer:
    def __init__(self, runner: ModelRunner, n_slots: int = 16, capacity: int = 4096) -> None:
        self.runner = runner
        self.slots = runner.make_slots(n_slots, capacity)
        self._drafters: OrderedDict[str, ModelDrafter] = OrderedDict()  # key -> drafter, LRU first
        self._free = list(range(n_slots))
        self._lock = threading.Lock()  # one forward at a time over the shared slots

    def _drafter(self, key: str) -> ModelDrafter:
        if key in self._drafters:
            self._drafters.move_to_end(key)
            return self._drafters[key]
        if self._free:
            slot = self._free.pop()
        else:  # a sequence that never said goodbye (or more live ones than slots): oldest out
            _, old = self._drafters.popitem(last=False)
            slot = old.slot
        drafter = ModelDrafter(self.runner, self.slots, slot)
        drafter.reset()
        self._drafters[key] = drafter
        return drafter

    def propose(self, key: str, tokens: list[int], k: int, params: SamplingParams | None = None,
                seed: int | None = None) -> Drafts:
        """k drafts continuing `tokens` for sequence `key`; sampled drafts use `seed`'s generator."""
        rng = np.random.default_rng(seed) if seed is not None else None
        with self._lock:
            start = time.perf_counter()
            drafter = self._drafter(key)
            drafts, q = drafter.propose(tokens, k, params, rng)
            return Drafts(drafts, q, drafter.last_catchup_s, time.perf_counter() - start)

    def release(self, key: str) -> None:
        with self._lock:
            drafter = self._drafters.pop(key, None)
            if drafter is not None:
                drafter.reset()
                self._free.append(drafter.slot)

    @property
    def live(self) -> int:
        return len(self._drafters)


ProposeFn = Callable[[str, list[int], int, SamplingParams | None, int | None], Drafts]


class RemoteDrafter:
    """One sequence's drafter whose model runs behind `propose` (a DraftServer, or a call to one
    over the network). Sampled requests send a seed drawn from the request's own generator, so a
    seeded request drafts the same way every time. If the draft side fails (replica gone, timeout),
    the step goes on without drafts: plain decoding, never a failed request."""

    alpha_prior = ModelDrafter.alpha_prior
    classifies = False

    def __init__(self, key: str, propose: ProposeFn, release: Callable[[str], None]) -> None:
        self.key, self._propose, self._release = key, propose, release
        self.last_catchup_s = 0.0

    def propose(self, tokens: list[int], k: int, params: SamplingParams | None = None,
                rng: np.random.Generator | None = None) -> tuple[list[int], np.ndarray | None]:
        if k < 1:
            return [], None
        sampled = params is not None and not params.greedy
        if sampled and rng is None:
            raise ValueError("sampled drafts need an rng")
        seed = int(rng.integers(2**63)) if sampled else None
        try:
            result = self._propose(self.key, list(tokens), k, params if sampled else None, seed)
        except Exception as exc:  # noqa: BLE001 - any failure of the far side means "no drafts"
            logger.warning("draft service failed (%s): this step decodes without drafts", exc)
            return [], None
        self.last_catchup_s = result.catchup_s
        return result.tokens, result.q

    def close(self) -> None:
        try:
            self._release(self.key)
        except Exception as exc:  # noqa: BLE001 - the slot ages out on the far side anyway
            logger.warning("draft release failed: %s", exc)
