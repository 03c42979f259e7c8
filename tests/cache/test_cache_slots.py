"""The second stage's slot refusals (core/cache/slots.py): question word, direction, polarity,
crossed roles, prefix negation, one-letter case, and their place in align.accepts."""

from __future__ import annotations

import numpy as np
import pytest

from core.cache import align, slots
from core.cache.align import TokenVectors


def tv(words: list[str], rows: list[np.ndarray]) -> TokenVectors:
    vectors = np.array([r / np.linalg.norm(r) for r in rows], dtype=np.float32)
    return TokenVectors(vectors, ["[CLS]", *words, "[SEP]"][: len(vectors)])


E = np.eye(8, dtype=np.float32)


def test_a_question_word_without_a_counterpart_is_measured_by_its_best_match():
    # "when" in a: its vector is half-way to b's "what" (cosine ~0.71) and orthogonal to the rest
    a = tv(["when", "did", "rome", "fall"], [E[7], E[0], E[1], E[2], E[3], E[7]])
    b = tv(["what", "replaced", "rome"], [E[7], E[0] + E[4], E[5], E[2], E[7]])
    assert slots.question_slot(a, b) == pytest.approx(1 / np.sqrt(2), abs=1e-6)
    assert slots.question_slot(b, a) == pytest.approx(slots.question_slot(a, b))
    assert slots.refusal("When did Rome fall?", "What replaced Rome?", a, b).startswith("question word")
    # the slot named by a noun ("year") matches closely: no refusal
    year = tv(["what", "year", "did", "rome", "fall"], [E[7], E[4], E[0], E[1], E[2], E[3], E[7]])
    assert slots.question_slot(a, year) == pytest.approx(1.0)


def test_question_slot_needs_a_question_word_on_both_sides():
    a = tv(["who", "painted", "it"], [E[7], E[0], E[1], E[2], E[7]])
    b = tv(["tell", "me", "the", "painter"], [E[7], E[3], E[4], E[5], E[6], E[7]])
    assert slots.question_slot(a, b) == 1.0  # an instruction names no slot to compare
    # "why" and "what" are not specific: "What causes X?" asks "Why X?"
    c = tv(["why", "is", "it"], [E[7], E[0], E[1], E[2], E[7]])
    d = tv(["what", "makes", "it"], [E[7], E[3], E[4], E[2], E[7]])
    assert slots.question_slot(c, d) == 1.0


@pytest.mark.parametrize(("a", "b", "flip"), [
    ("How does water flow into a cave system?", "How does water flow out of a cave system?", True),
    ("Why does the tide come in?", "Why does the tide go out?", True),
    ("How do I get into a kayak from a dock?", "How do I get out of a kayak onto a dock?", True),
    ("Flights from Paris", "Flights to Paris", True),
    # a moved phrase is a deletion and an insertion, not a flip
    ("In winter, what tire pressure should I use?", "What tire pressure should I use in winter?", False),
    ("What books are like Harry Potter?", "Which books are like Harry Potter?", False),
    # a long rewording is the model's to judge
    ("How do I get into a kayak?", "What is the easiest way for a beginner to climb into a kayak?", False),
    # the "to" of "how to" is the asker's frame, not a direction (round 8)
    ("How to write meeting minutes?", "How do I write meeting minutes?", False),
    ("How to get into the loft?", "How do I get out of the loft?", True),
])
def test_direction_flip(a, b, flip):
    assert slots.direction_flip(a, b) is flip
    assert slots.direction_flip(b, a) is flip


@pytest.mark.parametrize(("a", "b", "differs"), [
    ("Should I clean old coins?", "Should I avoid cleaning old coins?", True),
    ("Which liquids are denser than water?", "Which liquids are less dense than water?", True),
    ("Which shampoos have sulfates?", "Which shampoos are sulfate-free?", True),
    ("How do I keep clay from drying out?", "How do I make clay dry out?", True),
    ("Why did the launch fail?", "Why did the launch succeed?", True),
    # the same polarity said two ways; "noted" has the root "not" but is no negation
    ("Why can't the body make vitamin C?", "Why cannot the body make vitamin C?", False),
    ("Which facts were noted?", "Which facts were recorded?", False),
    ("How do I stop a fire from spreading?", "How do I keep a fire from spreading?", False),
])
def test_polarity(a, b, differs):
    assert slots.polarity(a, b) is differs
    assert slots.polarity(b, a) is differs


def test_roles_crossed_compares_roots_and_needs_a_word_between():
    assert slots.roles_crossed("How do I steam dumplings after frying them?",
                               "How do I fry dumplings after steaming them?")
    # one block moved: nothing crosses around a word between
    assert not slots.roles_crossed("After drinking coffee, how long until I can sleep?",
                                   "How long until I can sleep after drinking coffee?")
    # two words exchanged with nothing between: the model's (a list "X and Y" / "Y and X")
    assert not slots.roles_crossed("Compare cats dogs", "Compare dogs cats")


def test_prefix_negation_and_one_letter_case():
    assert slots.prefix_negated("Which instructions change the flag?",
                                "Which instructions leave the flag unchanged?")
    assert not slots.prefix_negated("Which instructions change the flag?", "Which instructions set the flag?")
    assert slots.letter_case("What is the code point of letter A?", "What is the code point of letter a?")
    # a prompt in one case carries none; "I" is a pronoun; a sentence's first word may be capital
    assert not slots.letter_case("WHAT IS THE CODE POINT OF A", "what is the code point of a")
    assert not slots.letter_case("Can I go?", "can i go?")
    assert not slots.letter_case("A cat sat.", "a cat sat.")


def test_accepts_applies_the_refusals_only_with_the_texts():
    generous = (0.0,) * len(align.FEATURES) + (100.0,)  # a model that accepts everything
    a = TokenVectors(E[:4], ["[CLS]", "coins", "clean", "[SEP]"])
    b = TokenVectors(E[:4], ["[CLS]", "coins", "clean", "[SEP]"])
    texts = ("Should I clean old coins?", "Should I avoid cleaning old coins?")
    assert align.accepts(0.99, True, a, b, generous)
    assert not align.accepts(0.99, True, a, b, generous, texts=texts)
    assert align.accepts(0.99, True, a, b, generous, texts=(texts[0], texts[0]))
    assert slots.refusal(texts[0], texts[0], a, b) is None


@pytest.mark.parametrize(("a", "b", "trivial"), [
    ("What is the rule of thirds in photography?", "what is the rule of thirds in photgraphy", True),
    ("Explain what phishing is.", "What is phishing?", True),
    ("Please tell me what umami is.", "What is umami?", True),
    ("How do I wax my bowstring?", "How do I wax my bow string?", True),
    # contractions spelled out
    ("What is the capital city of Australia? (ref 58e74f)",
     "what's the capital city of Australia ? (ref 58e74f)", True),
    ("Why isn't the sky green?", "Why is not the sky green?", True),
    ("What's phishing?", "Why is phishing?", False),
    ("Why does ice sink?", "Why doesn't ice sink?", False),
    ("I'm baking tonight and ran out of eggs. What can I use instead of eggs?",
     "What can I use instead of eggs?", True),
    # a substitution is no typo; a question word, a negation or a direction is no framing
    ("What does 'affect' mean?", "What does 'effect' mean?", False),
    ("What is a waxing moon?", "What is a waning moon?", False),
    ("What is phishing?", "Why is phishing?", False),
    ("Can I eat raw eggs?", "Can I not eat raw eggs?", False),
    ("Flights to Paris", "Flights from Paris", False),
    # context then another question
    ("I use Django. How do I add a column?", "How do I drop a column?", False),
])
def test_trivial_edit(a, b, trivial):
    assert slots.trivial_edit(a, b) is trivial
    assert slots.trivial_edit(b, a) is trivial


def test_trivial_edit_is_a_feature_read_from_the_texts():
    a = TokenVectors(E[:3], ["[CLS]", "phishing", "[SEP]"])
    with_texts = align.features(0.95, True, a, a, ("Explain what phishing is.", "What is phishing?"))
    assert with_texts[align.FEATURES.index("trivial_edit")] == 1.0
    assert align.features(0.95, True, a, a)[align.FEATURES.index("trivial_edit")] == 0.0
    assert align.WEIGHTS[align.FEATURES.index("trivial_edit")] > 0  # it speaks for a hit


def test_a_trivial_edit_is_a_hit_from_its_own_cosine_without_the_model():
    refusing = (0.0,) * len(align.FEATURES) + (-100.0,)  # a model that refuses everything
    a = TokenVectors(E[:3], ["[CLS]", "everest", "[SEP]"])
    b = TokenVectors(E[[0, 3, 2]], ["[CLS]", "everst", "[SEP]"])
    texts = ("How tall is Mount Everest?", "how tall is mount everst")
    low = align.TRIVIAL_MIN_COSINE + 0.01
    assert align.accepts(low, True, a, b, refusing, texts=texts)
    assert not align.accepts(align.TRIVIAL_MIN_COSINE - 0.01, True, a, b, refusing, texts=texts)
    # without the texts, or for another prompt, the cosine floor and the model decide
    assert not align.accepts(low, True, a, b, refusing)
    assert not align.accepts(0.99, True, a, b, refusing, texts=(texts[0], "How old is Mount Everest?"))
    # the store's threshold (min_cosine) binds the model, not the trivial edit
    generous = (0.0,) * len(align.FEATURES) + (100.0,)
    other = (texts[0], "How old is Everest?")
    assert not align.accepts(0.85, True, a, b, generous, texts=other, min_cosine=0.9)
    assert align.accepts(0.85, True, a, b, refusing, texts=texts, min_cosine=0.9)


def test_the_askers_frame_is_dropped():
    assert slots._asker_dropped(("how", "do", "i", "write", "it")) == ("how", "write", "it")
    assert slots._asker_dropped(("how", "to", "write", "it")) == ("how", "write", "it")
    assert slots._asker_dropped(("go", "to", "paris")) == ("go", "to", "paris")
