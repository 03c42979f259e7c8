"""The semantic cache's second stage (core/cache/align.py): features, decision, fit, encoder cache."""

from __future__ import annotations

import numpy as np
import pytest

from core.cache import align
from core.cache.align import TokenVectors


def tokens(words: list[str], rows: list[int], dim: int = 8) -> TokenVectors:
    return TokenVectors(np.eye(dim, dtype=np.float32)[rows], words)


STORED = tokens(["[CLS]", "tell", "boss", "about", "coworker", "?", "[SEP]"], [7, 0, 1, 2, 3, 6, 7])


def test_identical_prompts_align_fully():
    assert align.alignment(STORED, STORED) == pytest.approx((0.0, 1.0, 1.0))


def test_special_tokens_and_punctuation_are_not_content():
    bare = tokens(["tell", "boss", "about", "coworker"], [0, 1, 2, 3])
    assert align.alignment(STORED, bare) == pytest.approx((0.0, 1.0, 1.0))


def test_a_swapped_word_is_a_changed_token_with_a_weak_match():
    swapped = tokens(["tell", "boss", "about", "manager"], [0, 1, 2, 5])  # orthogonal: unrelated
    changed, changed_min, weakest = align.alignment(STORED, swapped)
    assert changed == pytest.approx(2 / 8) and changed_min == pytest.approx(0.0) and weakest == 0.0


def test_alignment_is_symmetric():
    vectors = np.array([[1, 0, 0, 0], [0, .6, .8, 0]], np.float32) @ np.eye(4, 8, dtype=np.float32)
    other = TokenVectors(vectors, ["tell", "chief"])
    assert align.alignment(STORED, other) == pytest.approx(align.alignment(other, STORED))


def test_accepts_needs_the_cosine_floor_and_the_guard():
    assert align.accepts(0.999, True, STORED, STORED)
    assert not align.accepts(align.MIN_COSINE - 0.01, True, STORED, STORED)
    assert not align.accepts(0.999, False, STORED, STORED)


def test_same_words_at_a_lower_cosine_are_refused():
    """The same word pieces in another order: the cosine alone says how much the order
    mattered, and the fitted model refuses a drop to 0.95 (a swap such as boss/coworker)."""
    reordered = tokens(["tell", "coworker", "about", "boss"], [0, 3, 2, 1])
    assert align.accepts(0.999, True, STORED, reordered)
    assert not align.accepts(0.95, True, STORED, reordered)


def test_logit_is_the_weighted_sum():
    feats = align.features(0.9, True, STORED, STORED)
    assert feats == pytest.approx([0.9, 1.0, 0.0, 1.0, 1.0])
    w = (1.0, 2.0, 3.0, 4.0, 5.0, -6.0)
    assert align.logit(feats, w) == pytest.approx(0.9 + 2 + 0 + 4 + 5 - 6)


def test_fit_logistic_finds_the_separating_direction():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 2))
    y = (x[:, 0] - 0.5 * x[:, 1] + 0.2 * rng.standard_normal(400) > 0).astype(float)
    w = align.fit_logistic(x, y)
    assert w[0] > 0 > w[1] and abs(w[0]) > abs(w[1])
    assert align.fit_logistic(x, y) == w  # deterministic
    accuracy = np.mean(((x @ np.array(w[:2]) + w[2]) > 0) == (y > 0))
    assert accuracy > 0.9


def test_cached_encoder_encodes_each_text_once_and_stays_bounded():
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> list[TokenVectors]:
        calls.append(list(texts))
        return [tokens([t], [len(t) % 8]) for t in texts]

    cached = align.CachedEncoder(encode, max_entries=2)
    first = cached(["a", "bb", "a"])
    assert calls == [["a", "bb"]] and first[0] is first[2]
    assert cached(["bb", "ccc"])[0] is first[1] and calls[-1] == ["ccc"]
    cached(["a"])  # "a" was evicted (least recently used of three): encoded again
    assert calls[-1] == ["a"]
    known = tokens(["x"], [1])
    cached.remember("dddd", known)  # computed elsewhere: never encoded
    assert cached(["dddd"])[0] is known and calls[-1] == ["a"]


def test_real_token_vectors_are_unit_length():
    from core.embedder import Embedder

    emb = Embedder.load(token_outputs=True, threads=1)
    out = emb.embed_tokens(["How do I cast on in knitting?", "Hi"])
    assert [tv.tokens[0] for tv in out] == ["[CLS]", "[CLS]"] and out[1].tokens[-1] == "[SEP]"
    assert len(out[1].tokens) == len(out[1].vectors) < len(out[0].tokens)  # padding removed
    assert np.allclose(np.linalg.norm(out[0].vectors, axis=1), 1.0, atol=1e-4)
    # the sentence vector of the token graph is the plain embedder's
    plain = Embedder.load(threads=1).embed(["Hi"])[0]
    assert np.allclose(emb.embed(["Hi"])[0], plain, atol=1e-5)
    vectors, both = emb.embed_with_tokens(["Hi"])
    assert np.allclose(vectors[0], plain, atol=1e-5) and np.allclose(both[0].vectors, out[1].vectors)
    with pytest.raises(ValueError, match="token_outputs"):
        Embedder.load(threads=1).embed_tokens(["Hi"])
