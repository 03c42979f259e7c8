"""Second-stage check of a semantic-cache candidate: cosine, the guard's verdict and an
alignment of the two prompts' MiniLM token vectors, combined by a logistic model.

Why token alignment: a near miss is usually one prompt with one word changed ("Austria" /
"Australia", "before" / "after"); a paraphrase rewords. Tokens present in both prompts (same
word piece) say nothing; the others ("changed" tokens) are matched to their most similar token
on the other side (contextual vectors, cosine). Features, all in [0, 1]:

- changed: share of content tokens without an identical token on the other side;
- changed_min: the weakest best match of a changed token (one badly matched word: a swap);
- weakest: the weakest best match of any content token (BERTScore-style greedy matching).

and two of the edit's shape, 0 or 1, from the word pieces alone (round 4: the near misses that
got through were swapped terms, one word replaced in place, or a word added):

- replaced_one: exactly one piece on each side without an identical piece on the other
  ("cast on" / "cast off", "under 250" / "over 250");
- added: one side has every piece of the other plus one or two ("half marathon" / "marathon").

and four of the aligned differing spans (round 5: difflib's alignment of the two prompts' content
pieces; a span is a run of pieces replaced, inserted or deleted):

- span_min: the weakest cosine between a replaced span and its replacement, each the mean of its
  contextual vectors (the aligned counterpart, not the best match anywhere: "into" / "out of");
- inserted: pieces inserted or deleted (not replaced), capped at 6, in [0, 1];
- only_function: every differing piece is a function word (lexicon.STOPWORDS, FILLER): a change
  of style, not of content;
- particle: a span whose direction words (lexicon.PARTICLES, DIRECTION_MARKERS: closed
  grammatical classes, not words taken from pairs) differ from its counterpart's ("in" / "out").

and one of the words (round 6, core/cache/slots.py; 0 when the caller gives no texts):

- trivial_edit: every differing run of words is function words or framing, or a word replaced by
  itself inflected, mistyped or a listed synonym ("photgraphy", "Explain X." / "What is X?"): word
  pieces cut a typo into pieces that look like a change of content.

The guard's softest refusal, one content word replaced by a word it does not know as a synonym
(guard.SOFT_REASONS), is left to the model (guard_ok = 0) instead of refusing outright: the span
features tell a synonym from a swapped term better than a missing synonym list does.

A swap is refused outright, before the model (``swapped``): the same pieces (at most two
differ) with two of them in the opposite order and a third shared piece between them on both
sides ("A given B" / "B given A", "cream with yogurt" / "yogurt with cream"). Moving one block
("In 1991, what ..." / "What ... in 1991?") never crosses: a piece between the two in one
prompt is on the other side of both in the other. A symmetric connective between them ("X and
Y" / "Y and X") does not count: a closed grammatical class, not words taken from pairs. On the
development pairs every such crossing among the candidates was a near miss.

Before the model, core/cache/slots.py refuses outright a pair whose prompts fill one slot of the
question differently (an unmatched question word, a direction, a polarity, two roles crossed),
and core/cache/roles.py one whose roles are reversed (round 7: runs transposed, subject and
object inverted, the first person's role swapped, a definition against another question; round
8: verbs compared by lemma, an irregular-verb table included, pronouns by person, the passive,
an operation asked backwards), when the caller passes the two prompts' texts (the store does).

The weights and the decision threshold are fitted by bench/cache_eval.py on the development
pairs only (core/cache/data/README.md); tests/cache/test_cache_eval.py keeps them equal to
the evaluation's choice. Candidates below MIN_COSINE are never scored.
"""

from __future__ import annotations

import base64
import difflib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from core.cache import lexicon, slots
from core.cache.tokens import TokenEncoder, TokenVectors, content_positions

# Fitted by bench/cache_eval.py (logistic regression on the development candidates: cosine >=
# MIN_COSINE, passed or softly refused by the guard, no swap, no refusal of core/cache/slots.py);
# order: FEATURES, then the bias.
MIN_COSINE = 0.80
# A candidate that slots.trivial_edit finds the same prompt (typos, inflection, framing, context
# sentences) is a hit from this cosine on, without the model: MiniLM scores "How tall is Mount
# Everest?" / "how tall is mount everst" at 0.65. On the development pairs no near miss that
# passes the guard and the slot refusals is a trivial edit, at any cosine.
TRIVIAL_MIN_COSINE = 0.60
WEIGHTS = (26.3337, 2.112, 12.0415, 4.2116, -0.7957, 0.0589, 0.2675, -1.1942, 1.0708, 4.2111, 0.5712,
           8.3531, -28.3525)
THRESHOLD = 3.25  # on the logit
FEATURES = ("cosine", "guard_ok", "changed", "changed_min", "weakest", "replaced_one", "added",
            "span_min", "inserted", "only_function", "particle", "trivial_edit")
MAX_INSERTED = 6
_FUNCTION = lexicon.STOPWORDS | lexicon.FILLER
_DIRECTION = lexicon.PARTICLES | lexicon.DIRECTION_MARKERS
MAX_SWAP_CHANGES = 2  # pieces without a partner; a rewording moves words without swapping roles
# Symmetric connectives: "X and Y" asks what "Y and X" asks, so a crossing around one is no swap.
_SYMMETRIC = frozenset({"and", "or", "nor", "vs", "versus", "plus", "&"})

_content = content_positions


def alignment(a: TokenVectors, b: TokenVectors) -> tuple[float, float, float]:
    """(changed, changed_min, weakest) of two prompts; symmetric."""
    ia, ib = _content(a), _content(b)
    if not ia or not ib:
        return 1.0, 0.0, 0.0
    sim = a.vectors[ia] @ b.vectors[ib].T  # [len(ia), len(ib)] cosines
    best_a, best_b = sim.max(axis=1), sim.max(axis=0)
    words_a = [a.tokens[i].lower() for i in ia]
    words_b = [b.tokens[i].lower() for i in ib]
    set_a, set_b = set(words_a), set(words_b)
    changed_a = [k for k, w in enumerate(words_a) if w not in set_b]
    changed_b = [k for k, w in enumerate(words_b) if w not in set_a]
    n_changed = len(changed_a) + len(changed_b)
    changed_best = np.concatenate([best_a[changed_a], best_b[changed_b]])
    changed_min = float(changed_best.min()) if n_changed else 1.0
    weakest = float(min(best_a.min(), best_b.min()))
    return n_changed / (len(ia) + len(ib)), changed_min, weakest


def _crossed(words_a: list[str], words_b: list[str]) -> bool:
    """Shared pieces x, y, z (each once per side) with x < z < y in one prompt and y < z < x in
    the other, z not a symmetric connective. Boolean matrix product: O(n^3) bits, n <= ~40."""
    once_a = {w for w, n in _counts(words_a).items() if n == 1}
    once_b = {w for w, n in _counts(words_b).items() if n == 1}
    shared = [w for w in words_a if w in once_a and w in once_b]
    if len(shared) < 3:
        return False
    pa = np.arange(len(shared))  # shared is in a's order
    pb = np.array([words_b.index(w) for w in shared])
    pivot = np.array([w not in _SYMMETRIC for w in shared])
    a_before = pa[:, None] < pa[None, :]  # [i, j]: i before j in a
    b_before = pb[:, None] < pb[None, :]
    # z after x in a, before x in b (and a pivot); then y after z in a, before z in b
    first = a_before & b_before.T & pivot[None, :]
    second = a_before & b_before.T
    return bool((first.astype(np.int32) @ second.astype(np.int32)).any())


def _counts(words: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for w in words:
        out[w] = out.get(w, 0) + 1
    return out


def structure(a: TokenVectors, b: TokenVectors) -> tuple[bool, float, float]:
    """(swapped, replaced_one, added) of two prompts' content pieces; symmetric."""
    words_a = [a.tokens[i].lower() for i in _content(a)]
    words_b = [b.tokens[i].lower() for i in _content(b)]
    set_a, set_b = set(words_a), set(words_b)
    only_a, only_b = len(set_a - set_b), len(set_b - set_a)
    swapped = only_a + only_b <= MAX_SWAP_CHANGES and _crossed(words_a, words_b)
    return (swapped, float(only_a == 1 and only_b == 1),
            float(min(only_a, only_b) == 0 and 1 <= max(only_a, only_b) <= 2))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (float(np.linalg.norm(v)) or 1.0)


def spans(a: TokenVectors, b: TokenVectors) -> tuple[float, float, float, float]:
    """(span_min, inserted, only_function, particle) of the aligned differing spans; the
    alignment is difflib's on the lower-cased content pieces."""
    ia, ib = _content(a), _content(b)
    words_a = [a.tokens[i].lower() for i in ia]
    words_b = [b.tokens[i].lower() for i in ib]
    matcher = difflib.SequenceMatcher(a=words_a, b=words_b, autojunk=False)
    span_min, inserted, differing, particle = 1.0, 0, [], 0.0
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        side_a, side_b = words_a[i1:i2], words_b[j1:j2]
        differing += side_a + side_b
        if {w for w in side_a if w in _DIRECTION} != {w for w in side_b if w in _DIRECTION}:
            particle = 1.0
        if op == "replace":
            va = _unit(a.vectors[ia[i1:i2]].mean(axis=0))
            vb = _unit(b.vectors[ib[j1:j2]].mean(axis=0))
            span_min = min(span_min, float(va @ vb))
        else:
            inserted += len(side_a) + len(side_b)
    only_function = float(bool(differing) and all(w in _FUNCTION for w in differing))
    return span_min, min(inserted, MAX_INSERTED) / MAX_INSERTED, only_function, particle


def features(cosine: float, guard_ok: bool, a: TokenVectors, b: TokenVectors,
             texts: tuple[str, str] | None = None) -> list[float]:
    """FEATURES of a candidate; trivial_edit needs the prompts' ``texts`` (0 without them)."""
    trivial = float(texts is not None and slots.trivial_edit(*texts))
    return [float(cosine), float(guard_ok), *alignment(a, b), *structure(a, b)[1:], *spans(a, b), trivial]


def logit(feats: Sequence[float], weights: Sequence[float] = WEIGHTS) -> float:
    return float(np.dot(feats, weights[:-1]) + weights[-1])


def accepts(cosine: float, guard_ok: bool, a: TokenVectors, b: TokenVectors,
            weights: Sequence[float] = WEIGHTS, threshold: float = THRESHOLD,
            texts: tuple[str, str] | None = None, min_cosine: float = MIN_COSINE) -> bool:
    """The served decision: no swap, no refusal of core/cache/slots.py (on ``texts``, the
    prompts of ``a`` and ``b``, when given), then either a trivial edit (slots.trivial_edit) at
    cosine >= TRIVIAL_MIN_COSINE, or cosine >= ``min_cosine`` (the store's threshold, MIN_COSINE
    by default) and the model's logit >= threshold. guard_ok False means the guard's soft refusal
    (guard.soft): callers never pass a pair the guard refused outright."""
    if cosine < min(min_cosine, TRIVIAL_MIN_COSINE) or structure(a, b)[0]:
        return False
    if texts is not None and slots.refusal(texts[0], texts[1], a, b) is not None:
        return False
    trivial = texts is not None and slots.trivial_edit(*texts)
    if trivial and cosine >= TRIVIAL_MIN_COSINE:
        return True
    if cosine < min_cosine:
        return False
    return logit(features(cosine, guard_ok, a, b, texts), weights) >= threshold


# Stored with an entry (store.put), so that a lookup needs no encoder call for its candidates:
# the content pieces and their vectors quantised to int8 with one scale per piece.
_PACK_SEP = "\x1f"


def pack(tv: TokenVectors) -> str:
    """A stored prompt's token vectors as a string (an entry's metadata): content pieces only
    (the features never read the others), int8 with a float16 scale per piece. ~0.4 KB per piece
    of 384 dimensions, base64 included."""
    keep = _content(tv)
    vectors = np.asarray(tv.vectors[keep], dtype=np.float32)
    scale = np.maximum(np.abs(vectors).max(axis=1), 1e-12) / 127.0
    q = np.round(vectors / scale[:, None]).astype(np.int8)
    blob = scale.astype(np.float16).tobytes() + q.tobytes()
    words = _PACK_SEP.join(tv.tokens[i] for i in keep)
    return f"{vectors.shape[1]}{_PACK_SEP}{words}{_PACK_SEP}{base64.b64encode(blob).decode('ascii')}"


def unpack(text: str) -> TokenVectors:
    """pack's inverse (unit vectors again); ValueError if ``text`` is not one."""
    fields = text.split(_PACK_SEP)
    if len(fields) < 3:
        raise ValueError("not packed token vectors")
    dim, words, blob = int(fields[0]), fields[1:-1], base64.b64decode(fields[-1], validate=True)
    n = len(words)
    if dim <= 0 or len(blob) != n * (2 + dim):
        raise ValueError("packed token vectors of the wrong size")
    scale = np.frombuffer(blob[:2 * n], dtype=np.float16).astype(np.float32)
    q = np.frombuffer(blob[2 * n:], dtype=np.int8).reshape(n, dim).astype(np.float32)
    vectors = q * scale[:, None]
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return TokenVectors(vectors, words)


class CachedEncoder:
    """A TokenEncoder that keeps the token vectors of recent texts: stored prompts come back as
    candidates again and again, so most lookups encode only the new prompt."""

    def __init__(self, encoder: TokenEncoder, max_entries: int = 4096) -> None:
        self.encoder, self.max_entries = encoder, max_entries
        self._seen: OrderedDict[str, TokenVectors] = OrderedDict()
        self._lock = threading.Lock()  # the store calls from several worker threads

    def __call__(self, texts: list[str]) -> list[TokenVectors]:
        with self._lock:
            known = {t: self._seen[t] for t in texts if t in self._seen}
            for t in known:
                self._seen.move_to_end(t)
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            fresh = dict(zip(missing, self.encoder(missing), strict=True))
            known.update(fresh)
            with self._lock:
                self._seen.update(fresh)
                while len(self._seen) > self.max_entries:
                    self._seen.popitem(last=False)
        return [known[t] for t in texts]

    def remember(self, text: str, vectors: TokenVectors) -> None:
        """Token vectors computed elsewhere (the lookup's own embedding run)."""
        with self._lock:
            self._seen[text] = vectors
            self._seen.move_to_end(text)
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 30) -> tuple[float, ...]:
    """Weights (then bias) of an L2-regularised logistic regression by Newton's method:
    deterministic, no dependency. Used by bench/cache_eval.py."""
    x1 = np.c_[x, np.ones(len(x))]
    w = np.zeros(x1.shape[1])
    ridge = l2 * np.eye(len(w))
    ridge[-1, -1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x1 @ w)))
        grad = x1.T @ (p - y) + ridge @ w
        hess = (x1 * (p * (1 - p))[:, None]).T @ x1 + ridge
        w = w - np.linalg.solve(hess, grad)
    return tuple(round(float(v), 4) for v in w)
