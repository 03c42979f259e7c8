"""LLM deployment: the text generator in a replica, generation steps off the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from core.llm.sampling import SamplingParams
from core.llm.textgen import TextGenerator


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 1})
class LLMDeployment:
    def __init__(self, variant: str = "q4", threads: int | None = None, spinning: bool = True,
                 device: str = "auto") -> None:
        self.generator = TextGenerator.load(variant=variant, threads=threads, spinning=spinning,
                                            device=device)
        # One worker: ONNX Runtime already uses every core for one step; concurrent streams
        # take turns step by step.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm")

    async def generate(self, prompt_ids: list[int], params: dict) -> dict:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.pool, self.generator.complete, prompt_ids,
                                            SamplingParams(**params))
        return dataclasses.asdict(result)

    async def stream(self, prompt_ids: list[int], params: dict) -> AsyncIterator[dict]:
        loop = asyncio.get_running_loop()
        steps = self.generator.stream(prompt_ids, SamplingParams(**params))
        try:
            while (delta := await loop.run_in_executor(self.pool, next, steps, None)) is not None:
                yield dataclasses.asdict(delta)
        finally:
            # A cancelled stream (client gone) stops decoding; close where the steps run.
            self.pool.submit(steps.close)
