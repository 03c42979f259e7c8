"""Refusals of the second stage that look at what fills one slot of the question, before the model.

Round 5's held-out false hits (data/README.md) were prompts about the same subject that differ in
one slot the features of core/cache/align.py average away: the question word ("What does 'rizz'
mean?" / "Where does the word rizz come from?"), a direction or the order of two arguments
("flow into" / "flow out of", "steam after frying" / "fry after steaming"), and a polarity
("clean" / "avoid cleaning", "denser" / "less dense", "change" / "unchanged"). Each check is
structural, over closed grammatical classes (question words, particles and direction markers,
downward-entailing words), not over words taken from pairs:

- question_slot: a specific question word (who / where / when) that the other prompt lacks, while
  it asks with another question word, must find a close counterpart there. MiniLM's contextual
  vector of "when" is close to that of "year" / "time" in "What year ...?" and of "who" close to
  "which artist"; a question about another slot of the same subject has none ("What does X
  mean?" / "Where does X come from?": the best match of "where" is "what", cosine ~0.6).
- direction_flip: the prompts differ in one short run of words only, and its direction words
  differ ("into" / "out of", "to" / "from", "come in" / "go out"), or in a few runs replaced in
  place that each do.
- polarity: a different number of downward-entailing words (not, without, avoid, less, fail, ...;
  "X-free", "keep X from -ing"): one prompt asks for the opposite of the other.
- roles_crossed: two content words (compared by root, so "steaming" is "steam") in the opposite
  order around a third, the swap align.structure finds among identical pieces only.
- prefix_negated: a content word in one prompt and the same root with a negating prefix in the
  other ("change" / "unchanged").
- letter_case: a one-letter capital word inside a sentence ("the letter A") lower-case in the other
  prompt; guard._case_flip leaves capitalisation alone since a capital may start a sentence.

refusal() then asks core/cache/roles.py (round 7: roles reversed without a direction word; round
8: across verb forms and pronoun cases, an operation asked backwards). Round 8 also reads the "to"
of "how to" as the asker's frame in direction_flip, not a direction ("How to write X?" / "How do
I write X?").

trivial_edit (round 6, widened in round 7) finds the same question in other words: typos,
inflection, framing, context sentences, and (round 7) a phrase moved from the start to the end,
runs exchanged around a symmetric connective, a number in digits or words, an imperative frame
for an open question word ("Explain X." / "What is X?") and definition frames ("What does X
mean?" / "What is X?").

Thresholds are chosen on the development pairs only (bench/cache_eval.py); every refusal is
final (a false refusal costs a cache miss, a false hit a wrong answer).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from functools import lru_cache

from core.cache import lexicon, roles
from core.cache.guard import _root, _typo
from core.cache.tokens import TokenVectors, content_positions

QUESTION_SLOT_MIN = 0.80  # the weakest counterpart cosine of a specific question word that passes

_QUESTION = frozenset("what which who whom whose when where why how".split())
# Question words that name the slot asked for; "what", "which", "how" and "why" are left out:
# "What causes ...?" asks "Why ...?", and "how" / "what" paraphrase each other freely.
_SPECIFIC = frozenset("who whom whose where when".split())
_DIRECTION = lexicon.PARTICLES | lexicon.DIRECTION_MARKERS
_FUNCTION = lexicon.STOPWORDS | lexicon.FILLER
MAX_FLIP_WORDS = 3  # a direction flip changes a few words in a place
MAX_FLIP_RUNS = 3
MAX_FRONTED = 6  # words of a phrase moved from the start to the end (trivial_edit)
_WORD = re.compile(r"[a-z0-9]+")
_FREE = re.compile(r"[a-z]-(?:free|less)\b|\b[a-z]+ free\b")  # sulfate-free, sugarless, gluten free
_PREVENT = re.compile(r"\b(?:keep|stop|prevent)\b(?: [a-z']+){1,3} from [a-z]+ing\b")
_ONE_LETTER = re.compile(r"(?<=\w)[ ,]+([A-HJ-Z])\b")  # "I" is a pronoun


# Per-text work is cached: a lookup compares one new prompt with up to n_results stored ones, and
# stored prompts come back as candidates again and again.
@lru_cache(maxsize=4096)
def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower().replace("n't", " not")))


def question_slot(a: TokenVectors, b: TokenVectors) -> float:
    """The weakest best cosine, into the other prompt, of a specific question word that prompt
    lacks, where both prompts have a question word; 1.0 when there is none to match."""
    pos_a, pos_b = content_positions(a), content_positions(b)
    low_a = [a.tokens[i].lower() for i in pos_a]
    low_b = [b.tokens[i].lower() for i in pos_b]
    if not (_QUESTION & set(low_a)) or not (_QUESTION & set(low_b)):
        return 1.0
    weakest = 1.0
    for mine, pos_m, low_m, other, pos_o, low_o in ((a, pos_a, low_a, b, pos_b, low_b),
                                                    (b, pos_b, low_b, a, pos_a, low_a)):
        for i, word in zip(pos_m, low_m, strict=True):
            if word in _SPECIFIC and word not in low_o:
                weakest = min(weakest, float((other.vectors[pos_o] @ mine.vectors[i]).max()))
    return weakest


def direction_flip(a: str, b: str) -> bool:
    """One short differing run whose direction words differ, or up to MAX_FLIP_RUNS short runs
    replaced in place, each with other direction words ("into ... from" / "out of ... onto"). A
    moved phrase ("In winter, ..." / "... in winter?") is a deletion and an insertion, not that; the
    "to" of "how to" is the asker's frame ("How to write X?" / "How do I write X?"), no direction."""
    wa, wb = _asker_dropped(_words(a)), _asker_dropped(_words(b))
    ops = [op for op in difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes() if op[0] != "equal"]
    if not ops or len(ops) > MAX_FLIP_RUNS:
        return False
    for op, i1, i2, j1, j2 in ops:
        side_a, side_b = wa[i1:i2], wb[j1:j2]
        if len(side_a) > MAX_FLIP_WORDS or len(side_b) > MAX_FLIP_WORDS or (len(ops) > 1 and op != "replace"):
            return False
        if {w for w in side_a if w in _DIRECTION} == {w for w in side_b if w in _DIRECTION}:
            return False
    return True


@lru_cache(maxsize=4096)
def _downward(text: str) -> int:
    low = text.lower()
    # "avoiding", "failed": by root, if the root is a word of 4+ letters ("noted" is no "not")
    words = sum(1 for w in _words(text)
                if w in lexicon.DOWNWARD or (len(_root(w)) >= 4 and _root(w) in lexicon.DOWNWARD))
    return words + len(_FREE.findall(low)) + len(_PREVENT.findall(low))


def polarity(a: str, b: str) -> bool:
    return _downward(a) != _downward(b)


@lru_cache(maxsize=4096)
def _roots(text: str) -> tuple[str, ...]:
    return tuple(_root(w) for w in _words(text) if w not in _FUNCTION)


def roles_crossed(a: str, b: str) -> bool:
    """Shared content roots x, y, z (each once per prompt) with x < z < y in one prompt and
    y < z < x in the other: moving one block never crosses like that (align._crossed)."""
    ra, rb = _roots(a), _roots(b)
    ca, cb = Counter(ra), Counter(rb)
    shared = [w for w in ra if ca[w] == 1 and cb[w] == 1]
    if len(shared) < 3:
        return False
    pb = {w: rb.index(w) for w in shared}  # shared is in a's order
    n = len(shared)
    return any(pb[shared[x]] > pb[shared[z]] > pb[shared[y]]
               for x in range(n) for z in range(x + 1, n) for y in range(z + 1, n))


def prefix_negated(a: str, b: str) -> bool:
    ra, rb = set(_roots(a)), set(_roots(b))
    return any(len(w) >= 4 and p + w in other
               for mine, other in ((ra, rb), (rb, ra)) for w in mine - other
               for p in lexicon.NEGATING_PREFIXES)


def letter_case(a: str, b: str) -> bool:
    for x, y in ((a, b), (b, a)):
        if x.lower() == x or x.upper() == x or y.lower() == y or y.upper() == y:
            continue  # a prompt in one case throughout carries no case
        for m in _ONE_LETTER.finditer(x):
            c = m.group(1)
            if re.search(rf"\b{c.lower()}\b", y) and not re.search(rf"\b{c}\b", y):
                return True
    return False


# Words whose change alone leaves the question as it was ("Explain X." / "What is X?", "Could you
# tell me ..." / "How do I ..."): function words and framing verbs, less every word a slot check
# above reads (question words, direction words, downward-entailing and contrast words).
_TRIVIAL = ((lexicon.STOPWORDS | lexicon.FILLER) - _QUESTION - _DIRECTION - lexicon.DOWNWARD
            - lexicon.CONTRAST_TERMS)
# framing only where a prompt starts ("Show me how ..."); elsewhere a verb ("v-if" / "v-show")
_FRAMING = _TRIVIAL | ((lexicon.FRAMING_VERBS | {"explain", "describe", "define"}) - lexicon.CONTRAST_TERMS)
# words, and every other symbol on its own ("®" / "™", "+"): a symbol is never trivial
_WORD_APOS = re.compile(r"[a-z0-9']+|[^\sa-z0-9'.,;:!?\"()\-]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _same_word(x: str, y: str) -> bool:
    """One word inflected, mistyped (guard._typo: no substitutions, so "affect" / "effect" stay
    apart) or a listed synonym."""
    return x == y or _root(x) == _root(y) or _typo(x, y) or _number(x) == _number(y) is not None or bool(
        lexicon.SYNONYM_INDEX.get(x, set()) & lexicon.SYNONYM_INDEX.get(y, set()))


def _number(word: str) -> float | None:
    """A number written in digits or as one word ("3" / "three")."""
    if word in lexicon.NUMBER_WORDS:
        return float(lexicon.NUMBER_WORDS[word])
    return float(word) if word.isdigit() else None


@lru_cache(maxsize=4096)  # align.accepts asks once for the path and once for the feature
def trivial_edit(a: str, b: str) -> bool:
    """Every differing run of words is function words or framing, words replaced one for one by
    the same word inflected, mistyped or a synonym, or words split or joined ("bow string" /
    "bowstring"): a second-stage feature (align.FEATURES), since word pieces split a typo into
    pieces that look like a change. Symmetric: difflib's alignment is not, so either way round.
    Sentences of context before the question count as no change ("I'm baking tonight. What can
    I use instead of eggs?" / "What can I use instead of eggs?"): the last sentence must be it."""
    wa, wb = _spelled(a), _spelled(b)
    if _trivial(wa, wb) or _trivial(wb, wa) or roles.exchanged_symmetrically(a, b):
        return True
    da, db = _defined(wa), _defined(wb)
    if da and db and (_trivial(da, db) or _trivial(db, da)):  # "What is X?" / "What does X mean?"
        return True
    for fronted, other in ((a, b), (b, a)):  # "For a beginner, which X?" / "Which X for a beginner?"
        head, comma, rest = fronted.partition(", ")
        if not comma or len(_spelled(head)) > MAX_FRONTED:
            continue
        moved = _spelled(rest) + _spelled(head)
        if _trivial(moved, _spelled(other)) or _trivial(_spelled(other), moved):
            return True
    for longer, shorter in ((a, b), (b, a)):
        sentences = _SENTENCE_END.split(longer.strip())
        if len(sentences) > 1 and len(_SENTENCE_END.split(shorter.strip())) == 1:
            last, other = _spelled(sentences[-1]), _spelled(shorter)
            if _trivial(last, other) or _trivial(other, last):
                return True
    return False


# Not _words above: redefining that name made the slot checks read "wasn't" as one word that
# is no negation (a polarity refused "Why wasn't X profitable?" / "Why was X not profitable?").
@lru_cache(maxsize=4096)
def _spelled(text: str) -> tuple[str, ...]:
    """Lower-cased words, contractions spelled out (lexicon.CONTRACTIONS), and "how do I", "how
    can you", ... written "how to": the asker's modal and pronoun frame one question."""
    words = [w for word in _WORD_APOS.findall(text.lower()) for w in lexicon.CONTRACTIONS.get(word, (word,))]
    return _how_to(tuple(words))


def _asker_dropped(words: tuple[str, ...]) -> tuple[str, ...]:
    """"how to" and "how do I", "how can you", ... as "how": the asker's frame, whose "to" is no
    direction word."""
    framed = _how_to(words)
    return tuple(w for i, w in enumerate(framed) if not (w == "to" and i and framed[i - 1] == "how"))


def _how_to(words: tuple[str, ...]) -> tuple[str, ...]:
    """"how do I", "how can you", ... written "how to"."""
    if "how" not in words:
        return words
    out, i = [], 0
    while i < len(words):
        out.append(words[i])
        if words[i] == "how" and words[i + 1:i + 2] and words[i + 1] in _HOW_MODAL \
                and words[i + 2:i + 3] and words[i + 2] in _ASKER:
            out.append("to")
            i += 3
            continue
        i += 1
    return tuple(out)


_HOW_MODAL = frozenset("do can should would could".split())
_ASKER = frozenset("i you we one".split())
# An imperative frame at the start asks what an open question word asks ("Explain X." / "What is
# X?", "List the Great Lakes." / "What are the Great Lakes?"); not "how many", "when", "why".
_OPEN_QUESTION = frozenset({"what", "which"})
_IMPERATIVE = (lexicon.FRAMING_VERBS | {"explain", "describe", "define", "name", "summarize", "summarise",
                                        "calculate", "compute", "find"}) - lexicon.CONTRAST_TERMS
_BE = frozenset("is are was were".split())
_DEFINING = frozenset("meaning definition".split())


def _defined(words: tuple[str, ...]) -> tuple[str, ...] | None:
    """What a definition question asks about: "What is X?", "What does X mean?", "What is the
    meaning of X?", "Define X." all ask what X is."""
    if len(words) >= 2 and words[0] == "define":
        return words[1:]
    if len(words) < 3 or words[0] != "what":
        return None
    if words[1] in ("does", "do") and words[-1] == "mean":
        return words[2:-1]
    if words[1] in _BE:
        rest = words[2:]
        if len(rest) >= 3 and rest[0] == "the" and rest[1] in _DEFINING and rest[2] == "of":
            return rest[3:]
        return rest
    return None


def _framed(side_a: tuple[str, ...], side_b: tuple[str, ...]) -> bool:
    """One side an imperative frame, the other an open question word and function words."""
    for x, y in ((side_a, side_b), (side_b, side_a)):
        if (x and any(w in _IMPERATIVE for w in x) and all(w in _FRAMING or w in _IMPERATIVE for w in x)
                and y and y[0] in _OPEN_QUESTION and all(w in _TRIVIAL for w in y[1:])):
            return True
    return False


def _trivial(wa: tuple[str, ...], wb: tuple[str, ...]) -> bool:
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes():
        side_a, side_b = wa[i1:i2], wb[j1:j2]
        trivial = _FRAMING if i1 == 0 or j1 == 0 else _TRIVIAL
        if op == "equal" or all(w in trivial for w in side_a + side_b) or "".join(side_a) == "".join(side_b):
            continue
        if (i1 == 0 or j1 == 0) and _framed(side_a, side_b):
            continue
        pairs = zip(side_a, side_b, strict=False)
        if op == "replace" and len(side_a) == len(side_b) and all(
                (x in trivial and y in trivial) or _same_word(x, y) for x, y in pairs):
            continue
        return False
    return True


def refusal(a: str, b: str, ta: TokenVectors, tb: TokenVectors) -> str | None:
    """Why prompts ``a`` and ``b`` (token vectors ``ta``, ``tb``) ask about different slots, or
    None. Symmetric."""
    slot = question_slot(ta, tb)
    if slot < QUESTION_SLOT_MIN:
        return f"question word unmatched: {slot:.2f}"
    if direction_flip(a, b):
        return "direction differs"
    if polarity(a, b):
        return "polarity differs"
    if roles_crossed(a, b):
        return "roles crossed"
    if prefix_negated(a, b):
        return "negated by a prefix"
    if letter_case(a, b):
        return "letter case differs"
    return roles.refusal(a, b)
