"""The n choices of one request stream side by side: one event stream of (choice index, delta)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


async def merged(streams: list, firsts: list[dict]) -> AsyncIterator[tuple[int, dict]]:
    """(stream number, delta) from every stream as they come, each stream's first delta first
    (it was awaited already); an error in any stream is raised here."""
    if len(streams) == 1:  # the common case: no tasks
        yield 0, firsts[0]
        async for delta in streams[0]:
            yield 0, delta
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int) -> None:
        try:
            async for delta in streams[i]:
                await queue.put((i, delta))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            await queue.put((i, exc))
        await queue.put((i, None))

    for i, first in enumerate(firsts):
        yield i, first
    tasks = [asyncio.create_task(pump(i)) for i in range(len(streams))]  # each ends by itself
    try:
        running = len(tasks)
        while running:
            i, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
