"""Deterministic unit vectors for the cache tests (384-d, like MiniLM)."""

from __future__ import annotations

import numpy as np

DIM = 384


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, seed: int, distance: float = 0.3) -> np.ndarray:
    """A unit vector with cosine ~ 1/sqrt(1 + distance^2) to v (0.958 for 0.3)."""
    noise = unit(seed + 10_000)
    noise -= noise.dot(v) * v
    w = v + distance * noise / np.linalg.norm(noise)
    return (w / np.linalg.norm(w)).astype(np.float32)
