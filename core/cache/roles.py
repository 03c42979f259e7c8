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
_FUNCTION = lexicon.STOPWORDS | lexicon.FILLER
_NO_ROLE_BEFORE = frozenset(_root(w) for w in lexicon.FRAMING_VERBS | {"teach", "explain", "for"})
MAX_RUN = 4  # words in one exchanged run


@lru_cache(maxsize=4096)
def _words(text: str) -> tuple[str, ...]:
    """Lower-cased words with contractions spelled out; one-letter words kept ("A minus B")."""
    return tuple(w for word in _WORD.findall(text.lower()) for w in lexicon.CONTRACTIONS.get(word, (word,)))


def transposed(a: str, b: str) -> bool:
    """a = P X M Y S and b = P Y M X S with X != Y (runs of up to MAX_RUN words) and a middle M
    holding a word that is no symmetric connective."""
    wa, wb = _words(a), _words(b)
    if len(wa) != len(wb) or wa == wb:
        return False
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
            middle = ma[lx:n - ly]
            if (mb[:ly] == ma[n - ly:] and mb[n - lx:] == ma[:lx] and mb[ly:n - lx] == middle
                    and any(w not in _SYMMETRIC for w in middle) and not _repeats(middle, wa[:start])):
                return True
    return False


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
    return None
