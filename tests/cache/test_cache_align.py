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


TEXT = "Tell my boss about my coworker?"


def test_accepts_needs_the_cosine_floor_and_weighs_the_guards_soft_refusal():
    # the store always passes the texts: the same prompt is a trivial edit, and the model's
    # logit, which reads that feature, accepts it too
    assert align.accepts(0.999, True, STORED, STORED, texts=(TEXT, TEXT))
    assert align.logit(align.features(0.999, True, STORED, STORED, (TEXT, TEXT))) >= align.THRESHOLD
    assert not align.accepts(align.MIN_COSINE - 0.01, True, STORED, STORED)
    # guard_ok False (a soft refusal: callers never pass a hard one) is a feature, not a veto
    assert align.WEIGHTS[align.FEATURES.index("guard_ok")] > 0
    assert align.logit(align.features(0.95, False, STORED, STORED)) < align.logit(
        align.features(0.95, True, STORED, STORED))


def test_a_swap_is_refused_whatever_the_model_says():
    stored, swapped = words("tell my boss about my coworker"), words("tell my coworker about my boss")
    assert align.structure(stored, swapped)[0]
    generous = (0.0,) * len(align.FEATURES) + (100.0,)  # a model that accepts everything
    assert align.accepts(0.999, True, stored, stored, generous)
    assert not align.accepts(0.999, True, stored, swapped, generous)


def test_same_words_moved_or_swapped():
    """The same word pieces: one block moved is left to the model (a hit at a high cosine,
    less likely the lower the cosine); two terms swapped are refused outright."""
    moved = tokens(["about", "coworker", "tell", "boss"], [2, 3, 0, 1])
    swapped = tokens(["tell", "coworker", "about", "boss"], [0, 3, 2, 1])
    texts = (TEXT, "About my coworker, tell my boss?")  # a phrase moved to the start: trivial
    assert align.accepts(0.999, True, STORED, moved, texts=texts)
    assert align.logit(align.features(0.999, True, STORED, moved, texts)) >= align.THRESHOLD
    assert align.logit(align.features(0.9, True, STORED, moved)) < align.logit(
        align.features(0.999, True, STORED, moved))
    assert not align.accepts(0.999, True, STORED, swapped)
    assert not align.accepts(0.999, True, STORED, swapped, texts=(TEXT, "Tell my coworker about my boss?"))


def test_logit_is_the_weighted_sum():
    feats = align.features(0.9, True, STORED, STORED)
    # cosine, guard_ok, changed, changed_min, weakest, replaced_one, added,
    # span_min, inserted, only_function, particle, trivial_edit (0: no texts given)
    assert feats == pytest.approx([0.9, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    assert len(feats) == len(align.FEATURES) == len(align.WEIGHTS) - 1
    w = (1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 9.0, 10.0, 0.0, 0.0, 0.0, 7.0, -6.0)
    assert align.logit(feats, w) == pytest.approx(0.9 + 2 + 0 + 4 + 5 + 10 - 6)


def words(text: str) -> TokenVectors:
    pieces = ["[CLS]", *text.split(), "[SEP]"]
    return tokens(pieces, [i % 8 for i in range(len(pieces))])


@pytest.mark.parametrize(("a", "b", "expected"), [
    # swapped terms around a kept word: a swap, both ways round
    ("what is the probability of a given b ?", "what is the probability of b given a ?", (1, 0, 0)),
    ("tell my boss about my coworker", "tell my coworker about my boss", (1, 0, 0)),
    ("is every square a rectangle", "is every rectangle a square", (1, 0, 0)),
    # one block moved: no crossing, whatever its length
    ("in 1991 , what happened to the soviet union", "what happened to the soviet union in 1991", (0, 0, 0)),
    ("how do i get to the airport from the hotel", "how do i get from the hotel to the airport", (0, 0, 0)),
    # a symmetric connective between the swapped terms: the same question
    ("difference between cats and dogs", "difference between dogs and cats", (0, 0, 0)),
    # one word replaced in place; a word added
    ("how do i cast on ?", "how do i cast off ?", (0, 1, 0)),
    ("pace for a 2 hour half marathon", "pace for a 2 hour marathon", (0, 0, 1)),
    ("pace for a 2 hour marathon", "pace for a 2 hour half marathon", (0, 0, 1)),
    # a rewording changes several words: none of the three, even where two words cross
    ("how do i start knitting", "what is the way to begin a knitting project", (0, 0, 0)),
    ("how long does it take to run 5 km", "how long does a 5 km run take", (0, 0, 0)),
])
def test_structure_of_the_edit(a, b, expected):
    """(swapped, replaced_one, added): swapped is refused outright, the others are features."""
    assert align.structure(words(a), words(b)) == expected
    assert align.structure(words(b), words(a)) == expected


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


def test_spans_of_a_replaced_particle():
    """"fade in" / "fade out": one span replaced by an unrelated vector, and a direction word."""
    a = tokens(["[CLS]", "fade", "in", "audio", "[SEP]"], [7, 0, 1, 2, 7])
    b = tokens(["[CLS]", "fade", "out", "audio", "[SEP]"], [7, 0, 3, 2, 7])
    span_min, inserted, only_function, particle = align.spans(a, b)
    assert span_min == pytest.approx(0.0) and inserted == 0.0 and particle == 1.0
    assert only_function == 0.0  # "out" is no function word
    assert align.spans(b, a) == (span_min, inserted, only_function, particle)


def test_spans_of_a_synonym_and_of_added_function_words():
    close = np.array([[0.0, 0.8, 0.6, 0, 0, 0, 0, 0]], np.float32)  # cosine 0.8 with row 1
    a = tokens(["raise", "the", "price"], [1, 4, 5])
    b = TokenVectors(np.r_[close, np.eye(8, dtype=np.float32)[[4, 5]]], ["increase", "the", "price"])
    assert align.spans(a, b) == pytest.approx((0.8, 0.0, 0.0, 0.0))
    # only "can you please" added: every differing piece is a function word
    c = tokens(["can", "you", "please", "raise", "the", "price"], [6, 7, 0, 1, 4, 5])
    assert align.spans(a, c) == pytest.approx((1.0, 3 / align.MAX_INSERTED, 1.0, 0.0))


def test_packed_token_vectors_round_trip():
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((5, 384)).astype(np.float32)
    tv = TokenVectors(raw / np.linalg.norm(raw, axis=1, keepdims=True),
                      ["[CLS]", "how", "##dy", "?", "[SEP]"])
    packed = align.pack(tv)
    back = align.unpack(packed)
    assert list(back.tokens) == ["how", "##dy"]  # content pieces only: all the features read
    assert np.allclose(back.vectors, tv.vectors[[1, 2]], atol=0.01)
    assert np.allclose(np.linalg.norm(back.vectors, axis=1), 1.0)
    assert len(packed) < 2 * (384 + 2) * 4 / 3 + 40  # int8: ~0.5 KB a piece, base64 included
    other = tokens(["how", "are", "you"], [0, 1, 2], dim=384)
    exact = align.features(0.9, True, tv, other)
    assert align.features(0.9, True, back, other) == pytest.approx(exact, abs=0.02)
    for bad in ("", "x", "8\x1fa\x1fnot base64!", "8\x1fa\x1f" + "AAAA"):
        with pytest.raises(ValueError):
            align.unpack(bad)
