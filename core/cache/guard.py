"""Semantic guard: reject a cosine match whose prompts differ in a way embeddings miss.

MiniLM scores "Convert 100 °F to Celsius" vs "... °C to Fahrenheit" at 0.87 and
"Flights from Paris to London" vs "... London to Paris" at 0.997: no threshold
separates those from paraphrases. So after the cosine check we compare cheap
symbolic features that decide the answer and that sentence embeddings blur:

- numbers (digits, decimals, negatives, written-out small numbers, ordinals),
  each with the unit attached to it (``100 °F`` differs from ``100 °C``);
- the other units (conversion targets: "... in km");
- named entities (capitalised, camel-case or letter+digit tokens, acronyms),
  each must appear in the other prompt, case-insensitively, so "france"
  still matches "France";
- negations (not, no, never, n't, without, ...), by count;
- contrast terms (advantages/disadvantages, when/where, how long/how far):
  the two prompts using different sides of one contrast set;
- the direction around "to/into/from/vs/than/over/->": a swapped pair;
- the same content words in swapped roles ("cats hate dogs" vs "dogs hate
  cats"), where moving one phrase ("in Python, ...") is allowed;
- inline code (`...`) when both prompts quote some: code is literal, so the
  quoted spans must be the same, case and symbols included (`[a-z]` is not `[A-Z]`,
  `const int*` is not `int* const`), which the uncased embedder and the word
  tokenizer both lose. Their order may differ ("`val` vs `var`");
- letter case where both prompts carry it: a word spelled the same but for case, other than
  lower vs capitalised ("Mbps" / "MBps", "mF" / "MF", "A" / "a"), names another thing (units,
  acronyms), which the uncased embedder cannot see. A prompt in one case throughout
  ("WHAT IS ...", "what is ...") carries no case, and "python" / "Python" is a typo.

Every check errs towards rejecting: a false reject only costs a cache miss,
a false accept returns a wrong answer. Pure Python: ~30 µs to extract the
features of a new prompt (the stored prompt's are cached), ~3 µs to compare.
The word lists live in lexicon.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from core.cache import lexicon as lx

_TOKEN_RE = re.compile(
    r"""
    (?P<num>(?:(?<![\w.])-)?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?)(?:(?P<ord>st|nd|rd|th)\b|(?P<dec>s)\b)?
    | (?P<mixed>[A-Za-z]+[-]?\d[\w]*)            # GPT-4, H100, x86, WW2
    | (?P<word>[A-Za-z]+(?:['’][A-Za-z]+)*)
    | (?P<deg>°\s*[CFKcfk]?)                     # °, °C, ° F
    | (?P<sym>[$€£¥%])
    | (?P<arrow>->|→)
    | (?P<slash>/)
    | (?P<punct>[,;:.!?()"]|\s-\s)
    """,
    re.VERBOSE,
)


@dataclass(slots=True)
class Tok:
    """One token: ``kind`` is num|ordinal|decade|word|mixed|deg|sym|slash|punct|arrow."""

    kind: str
    text: str
    low: str
    value: float | None = None
    sent_start: bool = False
    stem: str = ""


@dataclass(frozen=True, slots=True)
class Features:
    quantities: tuple[tuple[float, str], ...]  # (value, attached unit or "")
    ordinals: tuple[float, ...]
    free_units: tuple[str, ...]  # units not attached to a number, in order
    entities: frozenset[str]  # stems of names, matched exactly against the other's words
    weak_entities: frozenset[str]  # capitalised first words, matched within one edit
    words: frozenset[str]  # every lower-cased word/mixed token, for containment
    negations: int
    contrasts: frozenset[str]  # stemmed tokens that belong to a contrast set
    content: tuple[str, ...]  # content-word stems in order, for swapped roles
    directed: frozenset[tuple[str, str]]  # (left, right) terms around to/vs/than
    operators: tuple[str, ...]  # code and maths operators in order: "is None" vs "== None"
    bare_one: bool  # the word "one" not read as a number ("which one"), maybe a spelled-out 1


def _tokenize(text: str) -> list[Tok]:
    out: list[Tok] = []
    sent_start = True
    for m in _TOKEN_RE.finditer(text):
        s = m.group(0)
        if m.group("num") is not None:
            num = m.group("num")
            if m.group("ord"):
                out.append(Tok("ordinal", s, s.lower(), _parse_number(num)))
            elif m.group("dec"):  # "the 90s": a decade, not 90 seconds
                out.append(Tok("decade", s, s.lower(), _parse_number(num)))
            else:
                out.append(Tok("num", s, s, _parse_number(num)))
        elif m.group("punct") is not None:
            p = s.strip()
            if p == "." and out and out[-1].low in lx.ABBREVIATIONS:
                continue  # "vs." does not end the sentence
            out.append(Tok("punct", p, p))
            if p in ".!?:":
                sent_start = True
                continue
        elif m.group("deg") is not None:
            letter = s[-1].upper() if s[-1].isalpha() else ""
            out.append(Tok("deg", s, {"C": "degc", "F": "degf", "K": "kelvin"}.get(letter, "deg")))
        else:
            kind = m.lastgroup or "word"
            low = s.lower().replace("’", "'")
            out.append(Tok(kind, s, low, sent_start=sent_start, stem=_stem(low)))
        sent_start = False
    return out


def _parse_number(s: str) -> float:
    s = s.replace(",", "")
    if "/" in s:
        num, den = s.split("/", 1)
        return float(num) / float(den) if float(den) else float("inf")
    return float(s)


@lru_cache(maxsize=8192)
def _stem(word: str) -> str:
    """Crude plural stripping, enough to match 'advantages' with 'advantage'."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    return word


def _merge_number_words(toks: list[Tok]) -> list[Tok]:
    """Turn runs of written numbers ("twenty five", "a dozen") into one num token.

    Bare "one" and "a" are not numbers ("which one is better"); they count as 1
    only right before a unit ("a mile", "one cup"), handled in _quantities.
    """
    out: list[Tok] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.kind == "word" and t.low in lx.NUMBER_WORDS and t.low != "one":
            total, current, j = 0.0, 0.0, i
            while (
                j < len(toks)
                and toks[j].kind == "word"
                and (toks[j].low in lx.NUMBER_WORDS or (toks[j].low == "and" and j > i))
            ):
                w = toks[j].low
                if w == "and":
                    j += 1
                    continue
                v = lx.NUMBER_WORDS[w]
                if v in (100.0, 1000.0, 1e6, 1e9) or w == "dozen":
                    current = max(current, 1.0) * v
                    if v >= 1000:
                        total, current = total + current, 0.0
                else:
                    current += v
                j += 1
            if toks[j - 1].low == "and":  # "two and" is not part of the number
                j -= 1
            out.append(Tok("num", " ".join(x.text for x in toks[i:j]), "", total + current))
            i = j
            continue
        after_number = bool(out) and out[-1].kind == "num"
        if t.kind == "word" and t.low in lx.ORDINAL_WORDS and not after_number:
            out.append(Tok("ordinal", t.text, t.low, lx.ORDINAL_WORDS[t.low]))
        else:
            out.append(t)
        i += 1
    return out


def _unit_at(toks: list[Tok], i: int, attached: bool) -> tuple[str, int] | None:
    """Canonical unit starting at toks[i] and how many tokens it spans.

    Ambiguous short forms ("m", "in", "F") count only right after a number or
    a degree sign, so "m" in "I'm" or "F" in a name is not a unit.
    """
    t = toks[i]
    if t.kind == "deg":
        # "100 ° F" / "100 degrees F": look at the next letter when ° had none
        if t.low == "deg" and i + 1 < len(toks) and toks[i + 1].low in ("c", "f", "k"):
            return {"c": "degc", "f": "degf", "k": "kelvin"}[toks[i + 1].low], 2
        return t.low, 1
    if t.kind == "sym":
        sym_unit = lx.SYMBOL_UNITS.get(t.text)
        return (sym_unit, 1) if sym_unit else None
    if t.kind != "word":
        return None
    low = t.low
    if low in ("degree", "degrees"):
        nxt = _unit_at(toks, i + 1, True) if i + 1 < len(toks) else None
        if nxt and nxt[0] in ("degc", "degf", "kelvin"):
            return nxt[0], nxt[1] + 1
        return "deg", 1
    unit = lx.UNITS.get(low)
    if unit is None and (attached or t.text in ("F", "C", "K")):
        unit = lx.SHORT_UNITS.get(t.text) or lx.SHORT_UNITS.get(low)
    if unit is None:
        return None
    span = 1
    # compound speeds/rates: "km per hour", "km/h" (tokenised as km, /, h)
    if i + 2 < len(toks) and toks[i + 1].low in ("per", "/"):
        rate = lx.UNITS.get(toks[i + 2].low) or lx.SHORT_UNITS.get(toks[i + 2].low)
        if rate:
            unit, span = f"{unit}/{rate}", 3
    return unit, span


def _quantities(toks: list[Tok]) -> tuple[list[tuple[float, str]], list[str], set[int]]:
    """Numbers with their attached unit, the free units, and token indexes used."""
    quantities: list[tuple[float, str]] = []
    free: list[tuple[str, int, int]] = []  # (unit, first token, tokens), decided at the end
    free_units: list[str] = []
    used: set[int] = set()
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.kind == "decade":
            quantities.append((t.value or 0.0, "decade"))
            used.add(i)
            i += 1
            continue
        is_num = t.kind == "num" or (t.kind == "word" and t.low in ("a", "an", "one"))
        if is_num:
            prefix = None
            if i > 0 and toks[i - 1].kind == "sym" and (i - 1) not in used:
                prefix = lx.SYMBOL_UNITS.get(toks[i - 1].text)  # "$50"
            # "a"/"one" count as 1 only before a full unit word ("a mile"), never "a m"
            unit = None
            if i + 1 < len(toks) and (t.kind == "num" or toks[i + 1].kind == "word"):
                unit = _unit_at(toks, i + 1, t.kind == "num")
            value = 1.0 if t.kind == "word" else (t.value or 0.0)
            if prefix and prefix != "pct":
                quantities.append((value, prefix))
                used.update((i - 1, i))
                i += 1
                continue
            if unit and unit[0]:
                quantities.append((value, unit[0]))
                used.update(range(i, i + 1 + unit[1]))
                i += 1 + unit[1]
                continue
            if t.kind == "num":
                quantities.append((value, ""))
                used.add(i)
            i += 1
            continue
        before_number = t.kind == "sym" and i + 1 < len(toks) and toks[i + 1].kind == "num"
        if i not in used and not before_number:
            unit = _unit_at(toks, i, False)
            if unit and unit[0]:
                free.append((unit[0], i, unit[1]))
                i += unit[1]
                continue
        i += 1
    for unit, start, span in free:
        if _is_unit_here(toks, start, unit, quantities, free):
            free_units.append(unit)
            used.update(range(start, start + span))
    return quantities, free_units, used


_QUESTION_WORDS = frozenset(("when", "where", "who", "why"))
_TEMPERATURE = frozenset(("degc", "degf", "kelvin", "deg"))
_TIME = frozenset(("sec", "min", "h", "day", "week", "month", "year", "decade", "century"))


def _is_unit_here(
    toks: list[Tok], i: int, unit: str, quantities: list[tuple[float, str]], free: list[tuple[str, int, int]]
) -> bool:
    """Is a unit word with no number a unit in this prompt, or an ordinary word?

    A lone "C" is a language ("pointers in C") unless something else in the prompt
    is a temperature; with no number at all, "ML" is machine learning and "hours",
    "daily" describe the question ("hours of sleep"), they are no conversion
    target. Such words stay content words, so the word checks still see them.
    """
    text = toks[i].text
    if len(text) == 1 and unit in _TEMPERATURE:
        others = [u for u, j, _ in free if j != i and (u in _TEMPERATURE)]
        return any(u in _TEMPERATURE for _, u in quantities) or bool(others)
    if quantities or (i > 0 and toks[i - 1].low in _RATE_WORDS):
        return True  # "per day", "every week": a rate, not a description
    return unit not in _TIME and not (len(text) > 1 and text.isupper())


_RATE_WORDS = frozenset(("per", "a", "an", "every", "each"))


def _entities(toks: list[Tok], used: set[int]) -> tuple[set[str], set[str]]:
    """Names in the prompt: (strong, weak).

    Strong: capitalised mid-sentence, acronyms, mixed tokens (GPT-4). Weak: a
    capitalised first word that is not a common word; it may just be a typo'd
    verb ("Recomend ..."), so it is matched loosely.
    """
    words = [t for t in toks if t.kind == "word"]
    # an all-caps prompt says nothing about names
    shouting = bool(words) and sum(t.text.isupper() for t in words) > len(words) / 2
    strong: set[str] = set()
    weak: set[str] = set()
    for i, t in enumerate(toks):
        if i in used:
            continue
        if t.kind == "mixed":
            strong.add(t.low)
        elif t.kind == "word" and not shouting and t.text[1:] != t.text[1:].lower():
            if not (t.text.isupper() and t.low in lx.COMMON):  # "OK", "IT" are words
                strong.add(t.stem)  # camel case or acronym: iPhone, PyTorch, NASA
        elif t.kind == "word" and not shouting and t.text[0].isupper() and t.text != "I":
            if t.sent_start:
                # "Explain ...", "Tips ...": a capital at the start is weak evidence
                if t.low not in lx.COMMON and t.stem not in lx.COMMON:
                    weak.add(t.stem)
            elif t.low not in lx.STOPWORDS:  # "The Hobbit": function words are no names
                strong.add(t.stem)
    return strong, weak


def _near(word: str, candidates: frozenset[str]) -> bool:
    """Is ``word`` within one edit of a candidate (words of 5+ letters only)?"""
    if len(word) < 5:
        return False
    for c in candidates:
        if abs(len(c) - len(word)) <= 1 and c[:1] == word[:1] and _one_edit(word, c):
            return True
    return False


def _one_edit(a: str, b: str) -> bool:
    """One insertion, deletion, substitution or swap of neighbours (a typo)."""
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        swapped = i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]
        return swapped or a[i + 1 :] == b[i + 1 :]
    return a[i:] == b[i + 1 :]


_SUFFIXES = ("ing", "ly", "ed", "es", "s")


def _root(word: str) -> str:
    """Crude inflection stripping: cooking, cooked, cooks -> cook; improve -> improv."""
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def _same_word(a: str, b: str) -> bool:
    """Same word misspelt, inflected (cook/cooking) or a listed synonym?

    Short words must match exactly: "cat"/"car" are two different words.
    """
    if a == b or _root(a) == _root(b) or _same_family(a, b):
        return True
    if lx.SYNONYM_INDEX.get(a, set()) & lx.SYNONYM_INDEX.get(b, set()):
        return True
    return (min(len(a), len(b)) >= 5 and _one_edit(a, b)) or _typo(a, b)


def _same_family(a: str, b: str) -> bool:
    """One word derived from the other: danger/dangerous, convert/conversion, director/directed.

    After one derivational suffix is cut from each, one root must be the other
    plus at most 2 letters, on a shared start of 5+ letters: so "import" and
    "important", "invest" and "investigate" stay different words.
    """
    for ra in (a, _cut_suffix(a)):
        for rb in (b, _cut_suffix(b)):
            short, long = (ra, rb) if len(ra) <= len(rb) else (rb, ra)
            if len(short) >= 5 and long.startswith(short) and len(long) - len(short) <= 2:
                return True
    return False


_DERIVATIONAL = ("ation", "ition", "sion", "tion", "ment", "ness", "ity", "ous", "ive", "ing", "ion",
                 "ed", "er", "or", "al", "ly", "es", "s", "e")


def _cut_suffix(word: str) -> str:
    for suffix in _DERIVATIONAL:
        if len(word) - len(suffix) >= 4 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _typo(a: str, b: str) -> bool:
    """A typing slip that makes no other word: a letter doubled ("bagg"), or one dropped,
    added or swapped inside a word of 4+ letters ("rivr", "imge", "staion").

    Substitutions and slips at either end are left out: "Iceland"/"Ireland",
    "bear"/"beard" are different words.
    """
    if len(a) > len(b):
        a, b = b, a
    if len(a) < 3 or a[0] != b[0] or a[-1] != b[-1] and len(a) == len(b):
        return False
    if len(b) == len(a) + 1:
        i = next((k for k in range(len(a)) if a[k] != b[k]), len(a))
        if a[i:] != b[i + 1 :]:
            return False
        doubled = b[i] == b[i - 1] or (i + 1 < len(b) and b[i] == b[i + 1])
        return doubled or (len(a) >= 4 and 0 < i < len(a))
    if len(a) == len(b) and len(a) >= 4:
        diff = [k for k in range(len(a)) if a[k] != b[k]]
        i, j = diff if len(diff) == 2 else (0, 0)
        return j == i + 1 and a[i] == b[j] and a[j] == b[i]
    return False


def _one_phrase_swapped(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, str] | None:
    """The same sentence with one word or two-word phrase replaced: "... symbol for
    gold/silver", "change my car's oil/air filter".

    A one-word synonym that is not listed ("translate"/"say") is rejected too:
    a miss costs less than serving the answer about silver for gold. The shared
    words around the replaced phrase must be 2+ (else the sentences share too
    little to call it one replacement), and words of one family, typos and
    compounds ("backup"/"back up") are no replacement.
    """
    if len(a) == len(b):
        diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
        if len(diff) == 1 and not _same_word(*diff[0]):
            return diff[0]
    n = min(len(a), len(b))
    lo = 0
    while lo < n and a[lo] == b[lo]:
        lo += 1
    hi = 0
    while hi < n - lo and a[-1 - hi] == b[-1 - hi]:
        hi += 1
    ra, rb = a[lo : len(a) - hi], b[lo : len(b) - hi]
    if not ra or not rb or len(ra) > 2 or len(rb) > 2 or lo + hi < 2:
        return None  # an insertion ("newborn baby") or a rewording, not a swap
    if "".join(ra) == "".join(rb) or any(_same_word(x, y) for x in ra for y in rb):
        return None
    return " ".join(ra), " ".join(rb)


def _prefix_negated(a: frozenset[str], b: frozenset[str]) -> tuple[str, str] | None:
    """A word in one prompt negated by a prefix in the other: cooked/uncooked."""
    for word in a - b:
        for prefix in lx.NEGATING_PREFIXES:
            if _negatable(word) and prefix + word in b:
                return word, prefix + word
            base = word[len(prefix) :]
            if word.startswith(prefix) and _negatable(base) and base in b and base not in a:
                return word, base
    return None


def _negatable(word: str) -> bool:
    """'do'/'undo', 'form'/'inform' are different words, not negations."""
    return len(word) >= 4 and word not in lx.STOPWORDS


# Operators the tokenizer drops: "==", "<=", "+", "**"; a "-" or "/" only spaced and
# before a number ("3x - 7"): in words, units and prose they join or dash
# ("gluten-free", "km/h", "renting - which is better").
_OPERATOR_RE = re.compile(r"[=<>!+*&|^~]+|(?<=\w )[-/](?= [\d(])")
_WITHOUT_SUFFIX = re.compile(r"[A-Za-z]-(?:free|less)\b", re.IGNORECASE)  # gluten-free, sugar-less
_NON_PREFIX = re.compile(r"\bnon-[A-Za-z]", re.IGNORECASE)  # non-renewable: the tokenizer splits it


def _negations(toks: list[Tok], text: str) -> int:
    words = sum(1 for t in toks if t.kind == "word" and (t.low in lx.NEGATIONS or t.low.endswith("n't")))
    return words + len(_WITHOUT_SUFFIX.findall(text)) + len(_NON_PREFIX.findall(text))


def _is_letter(t: Tok) -> bool:
    """A single capital letter is a label ("from A to Z", "plan B"), not the article."""
    return len(t.text) == 1 and t.text.isupper() and t.text != "I"


def _side_terms(toks: list[Tok], start: int, step: int) -> list[str]:
    """Up to two content words next to a direction marker, within the clause."""
    terms: list[str] = []
    i = start
    while 0 <= i < len(toks) and len(terms) < 2:
        t = toks[i]
        if t.kind in ("punct", "arrow") or t.low in lx.DIRECTION_MARKERS or t.low in lx.CLAUSE_BREAKS:
            break
        if t.kind in ("word", "mixed") and (t.low not in lx.STOPWORDS or _is_letter(t)):
            unit = lx.UNITS.get(t.low)
            terms.append(unit or t.stem)
        elif t.kind == "deg":
            terms.append(t.low)
        i += step
    return terms


def _directed(toks: list[Tok]) -> set[tuple[str, str]]:
    """Ordered (left, right) term pairs around to/into/from/vs/than/->."""
    pairs: set[tuple[str, str]] = set()
    for i, t in enumerate(toks):
        if t.low in lx.DIRECTION_MARKERS or t.kind == "arrow":
            left, right = _side_terms(toks, i - 1, -1), _side_terms(toks, i + 1, 1)
            pairs.update((a, b) for a in left for b in right if a != b)
    return pairs


@lru_cache(maxsize=4096)
def features(text: str) -> Features:
    """Extract the comparison features of one prompt (cached: stored prompts repeat)."""
    toks = _merge_number_words(_tokenize(text))
    quantities, free_units, used = _quantities(toks)
    return _build(text, toks, quantities, free_units, used)


def _phrases(toks: list[Tok]) -> tuple[set[str], set[int]]:
    """Two-word terms and the indexes of words they consume.

    'how long', 'how many' ... become one question-type token ('how do/can/to'
    is the manner kind); the adjective then leaves the word checks, so "how
    long" and "how much time" or "the distance" can still match. Phrasal verbs
    ('turn on', 'log out') become one token, so on/off is a contrast.
    """
    out: set[str] = set()
    consumed: set[int] = set()
    for i, t in enumerate(toks):
        nxt = toks[i + 1].low if i + 1 < len(toks) and toks[i + 1].kind == "word" else ""
        if t.low == "how's":
            out.add("how_manner")
        elif t.low == "how" and nxt:
            if nxt == "much" and i + 2 < len(toks) and toks[i + 2].low == "time":
                nxt = "long"  # "how much time" asks "how long"
                consumed.add(i + 2)
            if nxt in lx.HOW_DEGREE:
                out.add(f"how_{nxt}")
                consumed.add(i + 1)
            else:  # "how do I", "how to", "how vaccines work"
                out.add("how_manner")
        elif t.low in lx.PHRASAL_VERBS and nxt in lx.PARTICLES:
            out.add(f"{t.low}_{nxt}")
    return out, consumed


def _next_low(toks: list[Tok], i: int) -> str:
    return toks[i + 1].low if i + 1 < len(toks) else ""


def _build(
    text: str, toks: list[Tok], quantities: list[tuple[float, str]], free_units: list[str], used: set[int]
) -> Features:
    # a question word in capitals inside lower-case text is a keyword (SQL's WHERE),
    # not the kind of question
    words = [t for t in toks if t.kind == "word"]
    shouting = sum(t.text.isupper() for t in words) > len(words) / 2
    stems = {t.stem for t in words if shouting or not (t.low in _QUESTION_WORDS and t.text.isupper())}
    bigrams, consumed = _phrases(toks)
    strong, weak = _entities(toks, used)
    return Features(
        quantities=tuple(quantities),
        ordinals=tuple(t.value or 0.0 for t in toks if t.kind == "ordinal"),
        free_units=tuple(free_units),
        entities=frozenset(strong),
        weak_entities=frozenset(weak),
        words=frozenset(w for t in toks if t.kind in ("word", "mixed") for w in (t.low, t.stem)),
        negations=_negations(toks, text),
        contrasts=frozenset((stems | bigrams) & lx.CONTRAST_TERMS),
        content=tuple(
            lx.UNITS.get(t.low, t.stem)  # "megabyte" and "MB" are one word here
            for i, t in enumerate(toks)
            if t.kind in ("word", "mixed")
            and i not in consumed
            and i not in used  # numbers and their units were compared already
            and t.low not in lx.STOPWORDS
            and t.low not in lx.FILLER
            and not (t.low in lx.FRAMING_VERBS and (t.sent_start or _next_low(toks, i) in ("me", "us")))
            and t.low not in lx.DIRECTION_MARKERS
            and t.low not in lx.NEGATIONS
        ),
        directed=frozenset(_directed(toks)),
        operators=tuple(op for op in _OPERATOR_RE.findall(text) if op != "!"),
        bare_one=any(t.low == "one" and i not in used for i, t in enumerate(toks)),
    )


def _contrast_clash(a: frozenset[str], b: frozenset[str]) -> str | None:
    """Both prompts use a contrast set, but different sides of it."""
    if not a or not b:
        return None
    sides_a: dict[int, set[int]] = {}
    for term in a:
        for group, side in lx.CONTRAST_INDEX[term]:
            sides_a.setdefault(group, set()).add(side)
    sides_b: dict[int, set[int]] = {}
    for term in b:
        for group, side in lx.CONTRAST_INDEX[term]:
            sides_b.setdefault(group, set()).add(side)
    for group in sides_a.keys() & sides_b.keys():
        if sides_a[group] != sides_b[group]:
            terms = frozenset().union(*lx.CONTRAST_SETS[group])
            return f"{'/'.join(sorted(a & terms))} vs {'/'.join(sorted(b & terms))}"
    return None


def _roles_swapped(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Same content words, reordered beyond moving one phrase: "cats hate dogs".

    Moving one block ("In Python, how do I X" -> "How do I X in Python") keeps
    the meaning; that is exactly "after stripping the common prefix and suffix,
    one remainder is a rotation of the other". Anything else swapped roles.
    """
    if a == b or sorted(a) != sorted(b):
        return False
    lo = 0
    while a[lo] == b[lo]:
        lo += 1
    hi = 0
    while a[-1 - hi] == b[-1 - hi]:
        hi += 1
    ra, rb = a[lo : len(a) - hi], b[lo : len(b) - hi]
    doubled = ra + ra
    return not any(doubled[k : k + len(rb)] == rb for k in range(len(ra)))


def _swapped(a: frozenset[tuple[str, str]], b: frozenset[tuple[str, str]]) -> tuple[str, str] | None:
    for left, right in a:
        if (right, left) in b and (left, right) not in b:
            return left, right
    return None


def _missing(fa: Features, fb: Features) -> set[str]:
    """Names of ``fa`` that ``fb`` does not mention (case-insensitive)."""
    out = {e for e in fa.entities
           if e not in fb.words and not (len(e) >= 5 and any(_typo(e, w) for w in fb.words))}
    out.update(e for e in fa.weak_entities if e not in fb.words and not _near(e, fb.words))
    return out


_CODE_SPAN = re.compile(r"`([^`]+)`")


def _code_spans(text: str) -> list[str]:
    return sorted(" ".join(span.split()) for span in _CODE_SPAN.findall(text))


_CASED_WORD = re.compile(r"[^\W_]+")

# Refusals that the second stage (core/cache/align.py) may overrule: one content word replaced
# by one the synonym lists do not know. Every other refusal is final.
SOFT_REASONS: tuple[str, ...] = ("one word differs",)


def soft(reason: str) -> bool:
    """Is this refusal (check's reason) one the second stage decides instead?"""
    return reason.startswith(SOFT_REASONS)


# Refusals that a trivial edit (slots.trivial_edit: typos, casing, framing, context sentences
# before the same question) overrules: a name mistyped ("independance") or named in a context
# sentence ("I'm planning a trip across Scandinavia. What is the longest river in Norway?") is
# no other entity. On the development pairs no near miss is both (bench/cache_eval.py).
TRIVIAL_REASONS: tuple[str, ...] = ("entities differ",)


def yields_to_trivial(reason: str) -> bool:
    """Is this refusal one a trivial edit overrules?"""
    return reason.startswith(TRIVIAL_REASONS)


def _case_flip(a: str, b: str) -> tuple[str, str] | None:
    """A word of ``a`` and one of ``b`` equal but for letter case, other than lower vs
    capitalised, both prompts mixing cases (see the module docstring)."""
    for text in (a, b):
        if text.lower() == text or text.upper() == text:
            return None
    spellings: dict[str, set[str]] = {}
    for w in _CASED_WORD.findall(a):
        spellings.setdefault(w.lower(), set()).add(w)
    for w in set(_CASED_WORD.findall(b)):
        seen = spellings.get(w.lower())
        if not seen or w in seen:
            continue
        for v in seen:
            if {v, w} != {w.lower(), w.lower().capitalize()}:
                return v, w
    return None


def check(a: str, b: str) -> tuple[bool, str]:
    """Do prompts ``a`` and ``b`` ask the same thing, as far as cheap features tell?

    Returns (ok, reason); reason names the first feature that differs, or "ok".
    """
    if a == b:
        return True, "ok"
    code_a, code_b = _code_spans(a), _code_spans(b)
    if code_a and code_b and code_a != code_b:
        return False, f"code differs: {code_a} vs {code_b}"
    flip = _case_flip(a, b)
    if flip:
        return False, f"case differs: {flip[0]} vs {flip[1]}"
    fa, fb = features(a), features(b)
    qa, qb = fa.quantities, fb.quantities
    if qa != qb:  # "1 joule" vs "one joule": a bare 1 matches a spelled-out "one" not read as a number
        qa = tuple(q for q in qa if not (fb.bare_one and q == (1.0, "")))
        qb = tuple(q for q in qb if not (fa.bare_one and q == (1.0, "")))
    if qa != qb:
        if sorted(qa) == sorted(qb):
            return False, "number order differs"
        return False, f"numbers differ: {_fmt(fa.quantities)} vs {_fmt(fb.quantities)}"
    if fa.operators != fb.operators:
        return False, f"operators differ: {' '.join(fa.operators)} vs {' '.join(fb.operators)}"
    if fa.ordinals != fb.ordinals:
        return False, "ordinals differ"
    units_a, units_b = fa.free_units, fb.free_units
    if fa.quantities:
        # with a number present the free units are conversion targets: order is noise
        units_a, units_b = tuple(sorted(units_a)), tuple(sorted(units_b))
    if units_a != units_b:
        return False, f"units differ: {list(fa.free_units)} vs {list(fb.free_units)}"
    missing = _missing(fa, fb) | _missing(fb, fa)
    if missing:
        return False, f"entities differ: {sorted(missing)}"
    if fa.negations != fb.negations:
        return False, f"negations differ: {fa.negations} vs {fb.negations}"
    clash = _contrast_clash(fa.contrasts, fb.contrasts)
    if clash:
        return False, f"contrast terms differ: {clash}"
    swap = _swapped(fa.directed, fb.directed)
    if swap:
        return False, f"term order differs: {swap[0]} / {swap[1]}"
    if _roles_swapped(fa.content, fb.content):
        return False, "same words in swapped roles"
    negated = _prefix_negated(fa.words, fb.words)
    if negated:
        return False, f"negated word: {negated[0]} vs {negated[1]}"
    swapped = _one_phrase_swapped(fa.content, fb.content)
    if swapped:
        return False, f"one word differs: {swapped[0]} vs {swapped[1]}"
    return True, "ok"


def _fmt(q: tuple[tuple[float, str], ...]) -> str:
    return ", ".join(f"{v:g}{(' ' + u) if u else ''}" for v, u in q) or "none"
