"""Embedder deployment: requests are batched by @serve.batch, tuned live through user_config."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from pydantic import BaseModel, Field
from ray import serve

from core.embedder import Embedder


class EmbedderBatching(BaseModel):
    """user_config of the deployment: change it with `serve deploy`, no restart."""

    max_batch_size: int = Field(32, ge=1, le=512)
    batch_wait_timeout_s: float = Field(0.002, ge=0.0, le=1.0)


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5},
                  user_config=EmbedderBatching().model_dump())
class EmbedderDeployment:
    def __init__(self, threads: int | None = None, device: str = "auto") -> None:
        self.embedder = Embedder.load(threads=threads, device=device)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    def reconfigure(self, user_config: dict) -> None:
        cfg = EmbedderBatching(**user_config)
        self._embed_batch.set_max_batch_size(cfg.max_batch_size)
        self._embed_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _embed_batch(self, requests: list[list[str]]) -> list[tuple[np.ndarray, list[int]]]:
        texts = [t for request in requests for t in request]
        loop = asyncio.get_running_loop()
        vectors, counts = await loop.run_in_executor(self.pool, self.embedder.embed_counted, texts)
        out, start = [], 0
        for request in requests:
            out.append((vectors[start:start + len(request)], counts[start:start + len(request)]))
            start += len(request)
        return out

    async def embed(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Vectors [N, dim] and token counts for one request's texts."""
        return await self._embed_batch(texts)

    def info(self) -> dict:
        return {"id": self.embedder.model_id, "dim": self.embedder.dim}
