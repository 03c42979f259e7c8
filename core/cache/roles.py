"""Refusals of the second stage for prompts whose words fill the same roles the other way round.

Round 6's held-out false hits (data/README.md) were mostly one relation asked with its roles
reversed, in ways core/cache/slots.py does not see (it reads direction words, polarity and
content roots crossed around a third one):

- transposed: two runs of words exchanged around a middle that is not a symmetric connective
  ("A minus B" / "B minus A", "all A are B" / "all B are A", "from X into Y" / "from Y into X");
  slots.roles_crossed compares content roots that occur once, so one-letter names and repeated
  words escape it. "X or Y" / "Y or X" asks the same (lexicon's symmetric connectives).
- do_inverted: the question word is the subject in one prompt and the object in the other
  ("Who succeeded X?" / "Who did X succeed?", "What beats a flush?" / "What does a flush beat?"):
  English marks it by do-support, a closed class.
- person_roles: the first person is the subject in one prompt ("I", "we") and the object in the
  other ("me", "us"): "Can I leave my house to my children?" / "Can my children leave their
  house to me?". A "me" after a framing verb ("tell me", "show me") or in "for me to" is no role.
- subject_changed: a yes/no question whose subject changes from a personal pronoun to a noun
  phrase before the same verb and object ("Can I transfer my scholarship ...?" / "Can a
  university transfer my scholarship ...?").
- stems_crossed: two adjacent words replaced in place by each other's derived forms ("tighten
  loose frames" / "loosen tight frames").

Each check is structural, over closed grammatical classes (auxiliaries, personal pronouns,
connectives), never over words taken from pairs; every refusal is final.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache

from core.cache import lexicon
from core.cache.guard import _root, _same_family

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_QUESTION = frozenset("what which who whom whose when where why how".split())
_DO = frozenset("do does did".split())
_AUX = frozenset("can could should would will shall may might must do does did is are was were has have"
                 .split())
_SYMMETRIC = frozenset("and or nor vs versus plus".split())
_SUBJECT = {"i": "first", "we": "first plural"}
_OBJECT = {"me": "first", "us": "first plural"}
_ONE_PRONOUN = frozenset((w,) for w in "i we you".split())
_ARTICLES = frozenset("a an the".split())
_BE = frozenset("is are was were".split())
_NOT_MEASURE = _AUX | frozenset("to come i you we".split())
_DEFINING = frozenset("mean meaning means definition define".split())  # "What does X mean?"
# "What does the word / name X mean?" defines X
_METALINGUISTIC = frozenset("word words term name phrase expression".split())
_OTHER_QUESTION = frozenset("how why when where".split())  # "which city is X?" asks "what is X?"
_PREPOSITIONS = frozenset("of for in to with on at by from about".split())
# "How does X work?" explains what X is; "How do you say X?" translates it
_EXPLAINING = frozenset("work works say".split())
_FUNCTION = lexicon.STOPWORDS | lexicon.FILLER
_DEFINING_VERBS = frozenset("explain describe define".split())
_FRAMING = lexicon.FRAMING_VERBS | _DEFINING_VERBS | _EXPLAINING
_NO_ROLE_BEFORE = frozenset(_root(w) for w in lexicon.FRAMING_VERBS | {"teach", "explain", "for"})
MAX_RUN = 4  # words in one exchanged run


@lru_cache(maxsize=4096)
def _words(text: str) -> tuple[str, ...]:
    """Lower-cased words with contractions spelled out; one-letter words kept ("A minus B")."""
    return tuple(w for word in _WORD.findall(text.lower()) for w in lexicon.CONTRACTIONS.get(word, (word,)))


def _exchange(a: str, b: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(middle, words before the first run) if a = P X M Y S and b = P Y M X S with X != Y
    (runs of up to MAX_RUN words), else None."""
    wa, wb = _words(a), _words(b)
    if len(wa) != len(wb) or wa == wb:
        return None
    start = 0
    while wa[start] == wb[start]:
        start += 1
    end = len(wa)
    while wa[end - 1] == wb[end - 1]:
        end -= 1
    ma, mb = wa[start:end], wb[start:end]
    n = len(ma)
    for lx in range(1, min(MAX_RUN, n - 2) + 1):
        for ly in range(1, min(MAX_RUN, n - lx - 1) + 1):
            if mb[:ly] == ma[n - ly:] and mb[n - lx:] == ma[:lx] and mb[ly:n - lx] == ma[lx:n - ly]:
                return ma[lx:n - ly], wa[:start]
    return None


def transposed(a: str, b: str) -> bool:
    """Two runs exchanged around a middle that holds a word other than a symmetric connective."""
    found = _exchange(a, b)
    return found is not None and any(w not in _SYMMETRIC for w in found[0]) and not _repeats(*found)


def exchanged_symmetrically(a: str, b: str) -> bool:
    """Two runs exchanged around a symmetric connective ("X or Y" / "Y or X"): the same question
    (slots.trivial_edit)."""
    found = _exchange(a, b)
    return found is not None and (all(w in _SYMMETRIC for w in found[0]) or _repeats(*found))


def _repeats(middle: tuple[str, ...], before: tuple[str, ...]) -> bool:
    """A symmetric connective and the words before the first run again: "a liter of water or a
    liter of milk" exchanges "a liter of water" and "a liter of milk" around "or"."""
    rest = middle[1:]
    return middle[0] in _SYMMETRIC and len(rest) <= len(before) and before[len(before) - len(rest):] == rest


def _inverted(subj: tuple[str, ...], obj: tuple[str, ...]) -> bool:
    """``subj`` asks with the question word as subject ("who succeeded X"), ``obj`` with do-support
    and a subject before the same verb ("who did X succeed"), that subject being in ``subj``
    after the verb."""
    k = 0
    while k < min(len(subj), len(obj)) and subj[k] == obj[k]:
        k += 1
    if not any(w in _QUESTION for w in subj[:k]) or k >= len(subj) or k >= len(obj):
        return False
    verb = subj[k]
    if verb in _FUNCTION or obj[k] not in _DO or subj[k + 1:k + 2] and subj[k + 1] in _AUX:
        return False  # "What discoveries is X known for?": a noun, not a verb, after the question word
    after = {w for w in subj[k + 1:] if w not in _FUNCTION}
    for j in range(k + 2, min(len(obj), k + 2 + MAX_RUN + 1)):
        if _derived(obj[j], verb):
            return bool(after & set(obj[k + 1:j]))
    return False


def do_inverted(a: str, b: str) -> bool:
    wa, wb = _words(a), _words(b)
    return _inverted(wa, wb) or _inverted(wb, wa)


@lru_cache(maxsize=4096)
def _persons(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """The persons (first, first plural) a prompt uses as subject and as object."""
    words = _words(text)
    subject, obj = set(), set()
    for i, w in enumerate(words):
        if w in _SUBJECT:
            subject.add(_SUBJECT[w])
        elif w in _OBJECT:
            before = words[i - 1] if i else ""
            after = words[i + 1] if i + 1 < len(words) else ""
            if _root(before) not in _NO_ROLE_BEFORE and after != "to":
                obj.add(_OBJECT[w])
    return frozenset(subject), frozenset(obj)


def person_roles(a: str, b: str) -> bool:
    (sa, oa), (sb, ob) = _persons(a), _persons(b)
    return bool(((sa - oa) & (ob - sb)) or ((sb - ob) & (oa - sa)))


def subject_changed(a: str, b: str) -> bool:
    """Both questions start with the same auxiliary, then a subject, then the same verb followed
    by the same word; one subject is a personal pronoun, the other a noun phrase."""
    wa, wb = _words(a), _words(b)
    if len(wa) < 4 or len(wb) < 4 or wa[0] != wb[0] or wa[0] not in _AUX:
        return False
    verbs = [(i + j, i, j) for i in range(2, min(len(wa) - 1, 2 + MAX_RUN))
             for j in range(2, min(len(wb) - 1, 2 + MAX_RUN))
             if wa[i] not in _FUNCTION and _derived(wa[i], wb[j]) and wa[i + 1] == wb[j + 1]]
    if not verbs:
        return False
    _, i, j = min(verbs)
    sa = tuple(w for w in wa[1:i] if w not in _ARTICLES)
    sb = tuple(w for w in wb[1:j] if w not in _ARTICLES)
    pronoun_a, pronoun_b = sa in _ONE_PRONOUN, sb in _ONE_PRONOUN
    noun_a = any(w not in _FUNCTION for w in sa)
    noun_b = any(w not in _FUNCTION for w in sb)
    return (pronoun_a and noun_b) or (pronoun_b and noun_a)


def _derived(x: str, y: str) -> bool:
    """One word inflected or derived from the other ("succeed" / "succeeded", "tight" / "tighten")."""
    short, long = sorted((x, y), key=len)
    return (x == y or _root(x) == _root(y) or _same_family(x, y)
            or (len(short) >= 3 and long.startswith(short) and len(long) - len(short) <= 2))


def stems_crossed(a: str, b: str) -> bool:
    wa, wb = _words(a), _words(b)
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes():
        if op == "replace" and i2 - i1 == 2 and j2 - j1 == 2:
            (x0, x1), (y0, y1) = wa[i1:i2], wb[j1:j2]
            if _derived(x0, y1) and _derived(x1, y0) and not _derived(x0, y0):
                return True
    return False


def refusal(a: str, b: str) -> str | None:
    """Why prompts ``a`` and ``b`` fill the same roles the other way round, or None. Symmetric."""
    if transposed(a, b):
        return "runs transposed"
    if do_inverted(a, b):
        return "subject and object inverted"
    if person_roles(a, b):
        return "first person's role differs"
    if subject_changed(a, b):
        return "subject changed"
    if stems_crossed(a, b):
        return "derived words crossed"
    if definition_vs_other(a, b):
        return "a definition against another question"
    if opposite_directions(a, b):
        return "opposite directions"
    if reason_vs_measure(a, b):
        return "a reason against a measure"
    return None




def _defines(words: tuple[str, ...]) -> bool:
    """A question for what a thing is: "What is X?", "Who was X?", "What does X mean?"."""
    return len(words) >= 3 and words[0] in ("what", "who") and (
        words[1] in _BE or (words[1] in _DO and words[-1] in _DEFINING))


def definition_vs_other(a: str, b: str) -> bool:
    """One prompt asks what a thing is and names nothing the other lacks; the other asks with
    another question word about it and adds a content word ("What is a Twitch affiliate?" /
    "How do I become a Twitch affiliate?", "What does X mean?" / "Why is X hard to translate?")."""
    wa, wb = _words(a), _words(b)
    for d, o in ((wa, wb), (wb, wa)):
        if not _defines(d) or o[0] not in _OTHER_QUESTION or _PREPOSITIONS & set(d):
            continue  # "What is the area of X?" asks for a value, "What is X in French?" a translation
        roots_o = {_root(w) for w in o}
        named = [w for w in d if w not in _FUNCTION and w not in _DEFINING and w not in _METALINGUISTIC]
        roots_d = {_root(w) for w in d}
        added = [w for w in o if w not in _FUNCTION and w not in _FRAMING and _root(w) not in roots_d]
        if named and all(_root(w) in roots_o for w in named) and added:
            return True
    return False


# Opposite direction words (closed class); "in" / "out" left out: "ants in the kitchen" / "get
# ants out of my kitchen" is a place, not a direction.
_OPPOSITE = (("into", "out"), ("on", "off"), ("up", "down"), ("to", "from"), ("over", "under"),
             ("above", "below"), ("before", "after"))


def opposite_directions(a: str, b: str) -> bool:
    """One prompt holds a direction word and not its opposite, the other the opposite and not it
    ("get mice into a house" / "get mice out of a house", "grant to" / "revoke from")."""
    wa, wb = set(_words(a)), set(_words(b))
    return any((x in wa) != (x in wb) and (y in wa) != (y in wb) and (x in wa) != (y in wa)
               for x, y in _OPPOSITE)


def _measures(words: tuple[str, ...]) -> bool:
    """A "how" that asks for a measure ("how many", "how hot", "how long"), not a manner ("how
    do I", "how to")."""
    return any(w == "how" and i + 1 < len(words) and words[i + 1] not in _NOT_MEASURE
               for i, w in enumerate(words))


def reason_vs_measure(a: str, b: str) -> bool:
    """One prompt asks why, the other for a measure ("Why is Death Valley so hot?" / "How hot does
    Death Valley get?"): another slot of the same subject."""
    wa, wb = _words(a), _words(b)
    return any("why" in x and "why" not in y and _measures(y) and not _measures(x)
               for x, y in ((wa, wb), (wb, wa)))
