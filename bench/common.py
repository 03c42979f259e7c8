"""Shared benchmark plumbing: timing, machine description, waiting for a server, result files."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from core.timing import machine, median_time  # noqa: F401 - re-exported for the benchmarks

RESULTS = Path(__file__).parent / "results"


def wait_until_ok(url: str, timeout_s: float, alive: Callable[[], None] | None = None) -> None:
    """Poll GET `url` until it answers 200. `alive` raises if the process behind it has died,
    so a crashed server fails at once instead of after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f}s")


def write(name: str, payload: dict | list, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1))
    (RESULTS / f"{name}.md").write_text(table)
    print(table)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
