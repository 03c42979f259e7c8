"""Speculative decoding inside the engine: per-sequence drafter and adaptive length, one shared
cost model. Used for decode steps while few sequences run (with a full batch, one batched decode
step already uses the cores, and speculation would only add work).

The draft model runs here (a ModelRunner: its own KVSlots beside the target's, same slot index per
sequence, no hop per step) or elsewhere (a `DraftService`, e.g. a DraftServer behind a Serve
handle: one call per step, keyed by sequence)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Protocol

from ..kv_slots import KVSlots
from ..model_runner import ModelRunner
from ..sampling import SamplingParams
from ..speculative import AdaptiveK, CostModel, ModelDrafter, PromptLookupDrafter, SpecStats, observe
from ..speculative import speculative_step as spec_step
from ..speculative.draft_server import Drafts, RemoteDrafter
from .sequence import Sequence

if TYPE_CHECKING:
    from .engine import EngineConfig


class DraftService(Protocol):
    """A draft model placed elsewhere (DraftServer's interface)."""

    def propose(self, key: str, tokens: list[int], k: int, params: SamplingParams | None,
                seed: int | None) -> Drafts: ...

    def release(self, key: str) -> None: ...


class Speculation:
    def __init__(self, config: EngineConfig, target: ModelRunner,
                 draft: ModelRunner | DraftService | None, slots: KVSlots) -> None:
        if config.speculative == "model" and draft is None:
            raise ValueError("speculative='model' needs a draft model (runner or service)")
        self.config, self.target, self.draft, self.slots = config, target, draft, slots
        self.draft_slots = (draft.make_slots(slots.n_slots, slots.capacity)
                            if config.speculative == "model" and isinstance(draft, ModelRunner) else None)
        self._keys = uuid.uuid4().hex[:8]  # several engines may share one draft service
        self.costs = CostModel()
        self.stats = SpecStats()
        self._state: dict[int, tuple[object, AdaptiveK]] = {}  # seq_id -> (drafter, k)

    def _for(self, seq: Sequence) -> tuple[object, AdaptiveK]:
        if seq.seq_id not in self._state:
            if self.config.speculative == "ngram":
                drafter = PromptLookupDrafter()
            elif self.draft_slots is not None:  # the draft model is here
                drafter = ModelDrafter(self.draft, self.draft_slots, seq.slot)
                drafter.reset()  # the slot may hold another sequence's draft KV
            else:
                drafter = RemoteDrafter(f"{self._keys}-{seq.seq_id}", self.draft.propose,
                                        self.draft.release)
            self._state[seq.seq_id] = (drafter, AdaptiveK(self.costs, self.config.spec_k_max,
                                                          alpha_prior=drafter.alpha_prior))
        return self._state[seq.seq_id]

    def step(self, seq: Sequence):
        drafter, k = self._for(seq)
        left = seq.params.max_tokens - len(seq.output_ids)
        result = spec_step(self.target, self.slots, seq.slot, seq.all_ids, drafter, k, seq.params,
                           seq.rng, max_draft=max(left - 1, 0))
        observe(self.costs, result)
        self.stats.add(result)
        return result

    def forget(self, seq: Sequence) -> None:
        drafter, _ = self._state.pop(seq.seq_id, (None, None))
        if isinstance(drafter, RemoteDrafter):
            drafter.close()
