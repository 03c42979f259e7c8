"""Is a short model answer right? Normalise both sides, then look for an accepted answer as whole words.

Only the first non-empty line counts (a model that rambles on to other candidates does not get credit
for them). Normalising: lower case, accents and apostrophes dropped, other punctuation to spaces
(decimal points and thousands commas inside numbers kept as numbers), number words up to ninety-nine
to digits, so "Twenty-six." matches "26" and "1,000" matches "1000".
"""

from __future__ import annotations

import re
import unicodedata

_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
          "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
          "nineteen"]
_TENS = {w: 10 * i for i, w in enumerate(["", "", "twenty", "thirty", "forty", "fifty", "sixty",
                                          "seventy", "eighty", "ninety"]) if w}
_WORD = {w: i for i, w in enumerate(_UNITS)} | _TENS
_NUMBER_WORDS = re.compile(rf"\b({'|'.join(_TENS)})[ -]({'|'.join(_UNITS[1:10])})\b|\b({'|'.join(_WORD)})\b")


def _number(m: re.Match) -> str:
    if m.group(1):
        return str(_TENS[m.group(1)] + _WORD[m.group(2)])
    return str(_WORD[m.group(3)])


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = re.sub(r"['\u2019\u2018`]", "", text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = text.replace("\u2212", "-")
    text = re.sub(r"(?<!\d)\.|\.(?!\d)|(?<=\w)-|-(?!\d)", " ", text)  # keep 3.5 and -5
    text = re.sub(r"[^a-z0-9.\- ]", " ", text)
    text = _NUMBER_WORDS.sub(_number, text)
    return " ".join(text.split())


def first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def is_correct(text: str, answers: list[str]) -> bool:
    said = f" {normalise(first_line(text))} "
    return any(f" {normalise(a)} " in said for a in answers)
