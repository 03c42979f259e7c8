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

Round 7's held-out false hits (data/README.md) reversed roles in forms these checks did not
read: an irregular verb across do-support ("Who did Saladin take Jerusalem from?" / "Who took
Jerusalem from Saladin?"), the first person in object case ("Who do I owe ...?" / "Who owes me
...?", "my manager asks me" / "I ask my manager") and an operation asked backwards ('What is
"listen" spelled backwards?' / 'What word spelled backwards gives "listen"?'). So (round 8):

- every verb comparison goes through lemma(): an English irregular-verb table
  (lexicon.IRREGULAR_VERBS, a general grammar table) and the regular inflection rules;
- do_inverted and transposed compare personal pronouns by person, not case (lexicon.
  OBJECT_PRONOUNS: "me" is the "I" of the other prompt), and transposed compares lemmas;
  do_inverted reads the passive too ("Who was X defeated by?" has X as the patient, "Who did X
  defeat?" as the agent);
- inverse_question: one prompt asks which thing an operation turns into X ("What word spelled
  backwards gives X?", "What number squared makes 49?": a question word, the operation, a result
  verb, then X), the other applies the operation to X (X before the operation, no result verb).

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
# personal pronouns, subject or object case, by person ("me" is the "I" of the other prompt)
_PERSONS = {w: w for w in "i we you he she they".split()} | {"me": "i", "us": "we", "him": "he",
                                                             "them": "they"}
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


_VOWELS = frozenset("aeiou")


@lru_cache(maxsize=16384)
def lemma(word: str) -> str:
    """A key shared by the forms of one verb: irregular forms to their base (lexicon.
    IRREGULAR_VERBS), then the regular inflections cut (-s, -ed, -ing), a final "y" read as "i"
    ("studies" / "studied" / "study"), a silent final "e" dropped ("making" / "make") and a final
    double consonant single ("stopped" / "stop", "added" / "add"). A key, not a dictionary form:
    "take" gives "tak", as "took", "takes" and "taking" do. Words of three letters or fewer stay."""
    word = lexicon.IRREGULAR_VERBS.get(word, word)
    if len(word) <= 3:
        return word
    for suffix in ("ing", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)]
            break
    else:
        if word.endswith("ed") and word[-3] != "e":  # "owed", "used": the base ends in "e"; not "need"
            word = word[:-1]
    if word.endswith("y"):
        word = word[:-1] + "i"
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in _VOWELS:
        word = word[:-1]
    return word


@lru_cache(maxsize=4096)
def _normalized(text: str) -> tuple[str, ...]:
    """_words with each word's lemma and personal pronouns in subject case: "my manager asks me"
    reads "my manag ask i", as "I ask my manager" reads "i ask my manag"."""
    return tuple(lemma(lexicon.OBJECT_PRONOUNS.get(w, w)) for w in _words(text))


def _exchange(a: str, b: str, words=_words) -> tuple[tuple[str, ...], ...] | None:
    """(middle, words before the first run, X, Y) if a = P X M Y S and b = P Y M X S with X != Y
    (runs of up to MAX_RUN words), else None. ``words``: _words, or _normalized to compare verbs
    by lemma and pronouns by person."""
    wa, wb = words(a), words(b)
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
                return ma[lx:n - ly], wa[:start], ma[:lx], ma[n - ly:]
    return None


def transposed(a: str, b: str) -> bool:
    """Two runs exchanged around a middle that holds a word other than a symmetric connective;
    words compared as written, or by lemma and person ("my manager asks me" / "I ask my manager")."""
    for words in (_words, _normalized):
        found = _exchange(a, b, words)
        if found is not None and any(w not in _SYMMETRIC for w in found[0]) and not _repeats(*found[:2]) \
                and not _echo(*found):
            return True
    return False


def _echo(middle: tuple[str, ...], _before: tuple[str, ...], x: tuple[str, ...], y: tuple[str, ...]) -> bool:
    """A question phrase moved across a copula: "In which museum is X?" / "X is in which museum?"
    asks one thing (an echo question), not two roles exchanged."""
    return (len(middle) == 1 and lemma(middle[0]) == "be"
            and any(w in _QUESTION for w in x) != any(w in _QUESTION for w in y))


def exchanged_symmetrically(a: str, b: str) -> bool:
    """Two runs exchanged around a symmetric connective ("X or Y" / "Y or X"): the same question
    (slots.trivial_edit)."""
    found = _exchange(a, b)
    return found is not None and (all(w in _SYMMETRIC for w in found[0]) or _repeats(*found[:2]))


def _repeats(middle: tuple[str, ...], before: tuple[str, ...]) -> bool:
    """A symmetric connective and the words before the first run again: "a liter of water or a
    liter of milk" exchanges "a liter of water" and "a liter of milk" around "or"."""
    rest = middle[1:]
    return middle[0] in _SYMMETRIC and len(rest) <= len(before) and before[len(before) - len(rest):] == rest


def _roles(words: tuple[str, ...], k: int, verb: str) -> tuple[set[str], set[str]] | None:
    """(agent, patient) of ``verb`` after a question phrase of ``k`` words, each the content words
    and persons that fill it: "who took X" (X patient), "who did X take" (X agent), "who was X
    taken by" (X patient), "who was taken by X" (X agent); None for another shape. A person
    counts where the role starts (the object right after the verb), not anywhere after it."""
    head = words[k]
    if head not in _NOT_VERB and _derived(head, verb):
        if words[k + 1:k + 2] and words[k + 1] in _AUX:
            return None  # "What discoveries is X known for?": a noun, not a verb, after the question word
        return set(), _fillers(words[k + 1:], words[k + 1:k + 2])
    if head not in _DO and head not in _BE:
        return None
    j = next((j for j in range(k + 2, min(len(words), k + 2 + MAX_RUN + 1)) if _derived(words[j], verb)),
             None)
    if head in _DO and j is not None:
        return _fillers(words[k + 1:j], words[k + 1:j]), set()
    if head in _BE:
        if words[k + 1:k + 2] and _derived(words[k + 1], verb) and words[k + 2:k + 3] == ("by",):
            return _fillers(words[k + 3:], words[k + 3:k + 4]), set()
        if j is not None and words[j + 1:j + 2] == ("by",):
            return set(), _fillers(words[k + 1:j], words[k + 1:j])
    return None


# words never taken for the verb of a role: function words, auxiliaries, prepositions and particles
_NOT_VERB = _FUNCTION | _AUX | _PREPOSITIONS | lexicon.DIRECTION_MARKERS | lexicon.PARTICLES


def _fillers(run: tuple[str, ...], start: tuple[str, ...]) -> set[str]:
    """Content words of a role's run and the persons at its start ("me" read as "I")."""
    return {w for w in run if w not in _FUNCTION} | {"person " + _PERSONS[w] for w in start if w in _PERSONS}


def _inverted(p: tuple[str, ...], q: tuple[str, ...]) -> bool:
    """After the same question phrase, one verb whose agent in one prompt is its patient in the
    other: do-support against the question word as subject ("Who did X succeed?" / "Who succeeded
    X?") and either against the passive ("Who was X defeated by?" / "Who did X defeat?")."""
    k = 0
    while k < min(len(p), len(q)) and p[k] == q[k]:
        k += 1
    if not any(w in _QUESTION for w in p[:k]) or k + 1 >= len(p) or k + 1 >= len(q):
        return False
    verbs = {w for w in p[k:k + MAX_RUN + 2] + q[k:k + MAX_RUN + 2] if w not in _NOT_VERB}
    for verb in verbs:
        rp, rq = _roles(p, k, verb), _roles(q, k, verb)
        if rp is not None and rq is not None and (rp[0] & rq[1] or rp[1] & rq[0]):
            return True
    return False


def do_inverted(a: str, b: str) -> bool:
    return _inverted(_words(a), _words(b))


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


@lru_cache(maxsize=65536)  # _inverted tries each word near the question phrase as the verb
def _derived(x: str, y: str) -> bool:
    """One word inflected or derived from the other ("succeed" / "succeeded", "tight" / "tighten",
    "took" / "take")."""
    short, long = sorted((x, y), key=len)
    return (x == y or _root(x) == _root(y) or lemma(x) == lemma(y) or _same_family(x, y)
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
    if inverse_question(a, b):
        return "an operation asked backwards"
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


# Verbs that state what an operation results in ("What number squared gives 49?"): a closed class
# of result copulas, compared by lemma.
_RESULT = frozenset(lemma(w) for w in "give make equal yield produce result become".split())
MAX_OPERATION = 4  # content words of the operation between the question phrase and the result verb


def _content(words: tuple[str, ...]) -> list[str]:
    return [w for w in words if w not in _FUNCTION]


def inverse_question(a: str, b: str) -> bool:
    """One prompt asks what an operation must be applied to for a result X: a question word, an
    operation (content words the other prompt holds), a result verb, then X ('What word spelled
    backwards gives "listen"?'); the other applies the operation to X: it holds X before the
    operation and no result verb ('What is "listen" spelled backwards?'). A cause asked without
    an operation ("What makes bread rise?" / "Why does bread rise?") is no such pair."""
    for inv, fwd in ((_words(a), _words(b)), (_words(b), _words(a))):
        if not inv or inv[0] not in _QUESTION:
            continue
        # a finite result verb: not an infinitive ("the command to make a branch")
        r = next((i for i, w in enumerate(inv) if lemma(w) in _RESULT and inv[i - 1] != "to"), None)
        fwd_lemmas = [lemma(w) for w in _content(fwd)]
        if r is None or any(w in _RESULT for w in fwd_lemmas) or any(w in _AUX for w in inv[1:r]):
            continue  # "What is the thing that makes X?" is no operation asked backwards
        operation = [lemma(w) for w in _content(inv[1:r]) if lemma(w) in fwd_lemmas]
        result = [lemma(w) for w in _content(inv[r + 1:])]
        if not operation or len(operation) > MAX_OPERATION or not result \
                or not all(w in fwd_lemmas for w in result):
            continue
        if max(fwd_lemmas.index(w) for w in result) < min(fwd_lemmas.index(w) for w in operation):
            return True
    return False
