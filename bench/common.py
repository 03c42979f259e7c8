"""Shared benchmark plumbing: timing, machine description, result files."""

from __future__ import annotations

import json
from pathlib import Path

from core.timing import machine, median_time  # noqa: F401 - re-exported for the benchmarks

RESULTS = Path(__file__).parent / "results"


def write(name: str, payload: dict | list, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1))
    (RESULTS / f"{name}.md").write_text(table)
    print(table)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
