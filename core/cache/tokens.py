"""A prompt's contextual token vectors, shared by the second stage (align.py) and its slot
refusals (slots.py)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

_SPECIAL = {"[CLS]", "[SEP]", "[PAD]"}
_PUNCT = re.compile(r"^[^\w]+$")


@dataclass(frozen=True, slots=True)
class TokenVectors:
    """One prompt's contextual token vectors (unit length, [n, dim]) and their word pieces."""

    vectors: np.ndarray
    tokens: Sequence[str]


# texts -> their token vectors (core.embedder.Embedder.embed_tokens)
TokenEncoder = Callable[[list[str]], list[TokenVectors]]


def content_positions(tv: TokenVectors) -> list[int]:
    """Positions of word pieces that carry meaning: not [CLS]/[SEP], not punctuation."""
    keep = [i for i, t in enumerate(tv.tokens) if t not in _SPECIAL and not _PUNCT.match(t)]
    return keep or list(range(len(tv.tokens)))
