"""Draft deployment: the speculative draft model as its own replica (placement "deployment").

For a draft on other hardware than its target (a CPU draft beside a GPU target, or a small GPU
slice). Each speculative step of the target's engine is one call here; the draft keeps a KV slot
per sequence (core.llm.speculative.draft_server), so a call feeds only the tokens it has not seen.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from ray import serve
from ray.serve.handle import DeploymentHandle

from core.llm.sampling import SamplingParams
from core.llm.speculative.draft_server import Drafts, DraftServer
from core.llm.textgen import TextGenerator

from .models import built_variant_dir


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
class DraftDeployment:
    def __init__(self, variant: str = "q4", threads: int | None = None, spinning: bool = False,
                 device: str = "auto", n_slots: int = 16, max_seq_len: int = 4096) -> None:
        runner = TextGenerator(built_variant_dir(variant), variant, threads=threads, spinning=spinning,
                               device=device).runner
        self.server = DraftServer(runner, n_slots, max_seq_len)
        self.server.slots.prefault()  # first touch of the KV buffers now, not in a request
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="draft")  # off the event loop

    async def propose(self, key: str, tokens: list[int], k: int, params: SamplingParams | None,
                      seed: int | None) -> Drafts:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.server.propose, key, tokens, k, params, seed)

    async def release(self, key: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self.pool, self.server.release, key)


class DraftClient:
    """The engine's DraftService over a Serve handle. Called from the engine thread (not the
    replica's event loop), so it may block on the response."""

    def __init__(self, handle: DeploymentHandle, timeout_s: float = 10.0) -> None:
        self.handle, self.timeout_s = handle, timeout_s

    def propose(self, key: str, tokens: list[int], k: int, params: SamplingParams | None,
                seed: int | None) -> Drafts:
        return self.handle.propose.remote(key, tokens, k, params, seed).result(timeout_s=self.timeout_s)

    def release(self, key: str) -> None:
        self.handle.release.remote(key)  # fire and forget: a lost release only ages out (LRU)
