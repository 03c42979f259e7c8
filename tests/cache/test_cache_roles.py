"""Refusals of reversed roles (core/cache/roles.py) and the round-7 trivial edits of slots.py."""

from __future__ import annotations

import numpy as np
import pytest

from core.cache import align, guard, roles, slots
from core.cache.align import TokenVectors


@pytest.mark.parametrize(("a", "b", "reason"), [
    # two runs exchanged around a middle that is no symmetric connective, one-letter names too
    ("What is X minus Y if X = 9 and Y = 4?", "What is Y minus X if X = 9 and Y = 4?", "runs transposed"),
    ("Convert 12 inches to centimetres.", "Convert 12 centimetres to inches.", "runs transposed"),
    ("If all cats are mammals, are all mammals cats?", "If all mammals are cats, are all mammals cats?",
     "runs transposed"),
    # the question word as subject against do-support with a subject
    ("Who defeated Napoleon at Waterloo?", "Who did Napoleon defeat at Waterloo?",
     "subject and object inverted"),
    ("What eats a fox?", "What does a fox eat?", "subject and object inverted"),
    # the first person as subject against as object
    ("Can I lend money to my brother?", "Can my brother lend money to me?", "first person's role differs"),
    # a pronoun subject changed to a noun phrase before the same verb and object
    ("Can I cancel my contract early?", "Can the landlord cancel my contract early?", "subject changed"),
    # two derived words crossed in place
    ("How do I soften hard butter?", "How do I harden soft butter?", "derived words crossed"),
    # what a thing is against another question about it
    ("What is a Roth IRA?", "How do I open a Roth IRA?", "a definition against another question"),
    ("What does the word hygge mean?", "Why is hygge popular?", "a definition against another question"),
    ("How do bees get into the hive?", "How do I get bees out of the hive?", "opposite directions"),
    ("Why is the Dead Sea so salty?", "How salty is the Dead Sea?", "a reason against a measure"),
])
def test_reversed_roles_are_refused(a, b, reason):
    assert roles.refusal(a, b) == reason
    assert roles.refusal(b, a) == reason


@pytest.mark.parametrize(("a", "b"), [
    ("Which is heavier, a kilo of feathers or a kilo of steel?",
     "Which is heavier, a kilo of steel or a kilo of feathers?"),  # exchanged around "or"
    ("What is the difference between TCP and UDP?", "What is the difference between UDP and TCP?"),
    ("Who wrote Hamlet?", "Who did write Hamlet?"),  # do-support without a subject
    ("What did Darwin discover?", "What discoveries is Darwin known for?"),  # a noun after "what"
    ("Could you tell me how I renew my passport?", "How do I renew my passport?"),  # "tell me" frames
    ("Should I water a cactus in winter?", "Should you water a cactus in winter?"),  # pronoun for pronoun
    ("What is blockchain?", "How does blockchain work?"),  # "how does X work" explains X
    ("What is the area of a circle?", "How do I find the area of a circle?"),  # a value, not a thing
    ("What is ants in the kitchen?", "How do I get ants out of the kitchen?"),  # "in" is a place
    ("Why do cats purr?", "How do cats purr?"),  # a manner is no measure
])
def test_the_same_roles_are_not_refused(a, b):
    assert roles.refusal(a, b) is None
    assert roles.refusal(b, a) is None


def test_slots_refusal_ends_with_the_roles():
    e = np.eye(4, dtype=np.float32)
    t = TokenVectors(e, ["[CLS]", "x", "y", "[SEP]"])
    texts = ("Who defeated Napoleon?", "Who did Napoleon defeat?")
    assert slots.refusal(*texts, t, t) == "subject and object inverted"
    generous = (0.0,) * len(align.FEATURES) + (100.0,)
    assert not align.accepts(0.99, True, t, t, generous, texts=texts)


@pytest.mark.parametrize(("a", "b", "trivial"), [
    # a phrase moved from the start to the end
    ("For a beginner, which telescope is best?", "Which telescope is best for a beginner?", True),
    ("After dinner, should I walk?", "Should I walk before dinner?", False),
    # runs exchanged around a symmetric connective, but not around another word
    ("Which is older, Rome or Athens?", "Which is older, Athens or Rome?", True),
    ("Is Rome older than Athens?", "Is Athens older than Rome?", False),
    # a number in digits or in words, not another number
    ("Can I run 5 miles a day?", "Can I run five miles a day?", True),
    ("Can I run 5 miles a day?", "Can I run six miles a day?", False),
    # an imperative frame for an open question word, "how do I" for "how to"
    ("Explain quantum tunnelling.", "What is quantum tunnelling?", True),
    ("Explain how to descale a kettle.", "How do I descale a kettle?", True),
    ("List the planets.", "How many planets are there?", False),
    ("Describe the Battle of Hastings.", "When was the Battle of Hastings?", False),
    # definition frames
    ("What is entropy?", "What does entropy mean?", True),
    ("What is the meaning of hygge?", "Define hygge.", True),
    ("What is GDP?", "What does GDP measure?", False),
])
def test_round7_trivial_edits(a, b, trivial):
    assert slots.trivial_edit(a, b) is trivial
    assert slots.trivial_edit(b, a) is trivial


def test_slot_checks_spell_contractions_out():
    # trivial_edit's word reader once replaced the slot checks' own: "wasn't" was no negation
    assert not slots.polarity("Why wasn't the Concorde profitable?", "Why was the Concorde not profitable?")
    assert slots.polarity("Why was the Concorde profitable?", "Why wasn't the Concorde profitable?")


def test_a_trivial_edit_overrules_only_the_guards_entity_refusal():
    # a context sentence that names a country before the same question
    stored = "What is the longest river in Spain?"
    asked = "We're driving through Portugal in May. What is the longest river in Spain?"
    ok, reason = guard.check(asked, stored)
    assert not ok and guard.yields_to_trivial(reason) and slots.trivial_edit(asked, stored)
    ok, reason = guard.check("What is the pH of 0.1 M HCl?", "What is the pH of 0.01 M HCl?")
    assert not ok and not guard.yields_to_trivial(reason)  # a number is never overruled
