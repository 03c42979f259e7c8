"""Cache-aware request routing for the LLM deployment (Ray Serve's request router API).

A request goes to the replica that last served the longest prefix it shares (same block
hashes as the engine's prefix cache), so its KV is likely still cached there; when that
replica is busier than the least-loaded candidate by more than `imbalance` requests, or no
replica holds the prefix, it falls back to power-of-two-choices (least loaded of two).
"""

from __future__ import annotations

from collections import OrderedDict

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, ReplicaID, RunningReplica

from core.llm.prefix_cache import chain_hashes


class PrefixAffinityRouter(PowerOfTwoChoicesRequestRouter):
    def initialize_state(self, block_size: int = 16, imbalance: int = 4,
                         max_entries: int = 200_000, **kwargs) -> None:
        self.block_size, self.imbalance, self.max_entries = block_size, imbalance, max_entries
        self.owner: OrderedDict[bytes, ReplicaID] = OrderedDict()  # prefix block -> replica

    def _hashes(self, request: PendingRequest | None) -> list[bytes]:
        if request is None or not request.args or not isinstance(request.args[0], list):
            return []
        return chain_hashes(request.args[0], self.block_size)

    def _load(self, replica: RunningReplica) -> int:
        return self.replica_queue_len_cache.get(replica.replica_id) or 0

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        fallback = await super().choose_replicas(candidate_replicas, pending_request)
        by_id = {r.replica_id: r for r in candidate_replicas}
        for key in reversed(self._hashes(pending_request)):  # longest shared prefix first
            owner = by_id.get(self.owner.get(key))
            if owner is None:
                continue
            least = min(self._load(r) for r in candidate_replicas)
            if self._load(owner) - least <= self.imbalance:
                return [[owner], *fallback]
            break
        return fallback

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result) -> None:
        for key in self._hashes(pending_request):
            self.owner[key] = replica_id
            self.owner.move_to_end(key)
        while len(self.owner) > self.max_entries:
            self.owner.popitem(last=False)
