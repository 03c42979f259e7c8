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
    ("Can I leave my house to my children?", "Can my children leave their house to me?",
     "first person's role differs"),
    # parallel, the same pair is two runs exchanged once pronouns are read by person (round 8)
    ("Can I lend money to my brother?", "Can my brother lend money to me?", "runs transposed"),
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


# ---------------------------------------------------------------- round 8: verb forms, persons, inverses

@pytest.mark.parametrize(("forms", "same"), [
    (("take", "took", "taken", "takes", "taking"), True),  # irregular table, then the regular rules
    (("lose", "lost", "loses", "losing"), True),
    (("study", "studies", "studied", "studying"), True),  # "y" read as "i"
    (("stop", "stops", "stopped", "stopping"), True),  # the doubled consonant single
    (("owe", "owes", "owed"), True),  # a short base ending in "e"
    (("do", "does", "did", "done"), True), (("be", "is", "are", "was", "were", "been"), True),
    (("need", "owe"), False), (("lose", "loose"), False), (("take", "talk"), False),
])
def test_lemma_joins_the_forms_of_one_verb(forms, same):
    keys = {roles.lemma(w) for w in forms}
    assert (len(keys) == 1) is same


def test_lemma_leaves_need_and_short_words_alone():
    assert roles.lemma("need") == roles.lemma("needed") == roles.lemma("needs")
    assert roles.lemma("add") == roles.lemma("added") and roles.lemma("ran") == roles.lemma("run")


@pytest.mark.parametrize(("a", "b", "reason"), [
    # round 7's held-out false hits: an irregular verb across do-support
    ("Who did Saladin take Jerusalem from?", "Who took Jerusalem from Saladin?",
     "subject and object inverted"),
    ("Who did Mike Tyson lose to?", "Who lost to Mike Tyson?", "subject and object inverted"),
    # the first person in object case is the "I" of the other prompt
    ("Who do I owe if my debt was sold to a collection agency?",
     "Who owes me if I sold a debt to a collection agency?", "subject and object inverted"),
    ("Who do you owe?", "Who owes you?", "subject and object inverted"),
    # the passive against do-support: X the patient in one, the agent in the other
    ("Who was Babur defeated by?", "Who did Babur defeat?", "subject and object inverted"),
    ("Who was defeated by Babur?", "Who defeated Babur?", "subject and object inverted"),
    # runs exchanged once verbs read by lemma and pronouns by person
    ("What should I say when my manager asks me for a raise?",
     "What should I say when I ask my manager for a raise?", "runs transposed"),
    ("Why does my sister hate me?", "Why do I hate my sister?", "runs transposed"),
    # an operation asked backwards
    ('What is "listen" spelled backwards?', 'What word spelled backwards gives "listen"?',
     "an operation asked backwards"),
    ("What is 7 squared?", "What number squared makes 7?", "an operation asked backwards"),
])
def test_round8_role_reversals_are_refused(a, b, reason):
    assert roles.refusal(a, b) == reason
    assert roles.refusal(b, a) == reason


@pytest.mark.parametrize(("a", "b"), [
    ("Who was Babur defeated by?", "Who defeated Babur?"),  # the passive keeps the roles
    ("Who was defeated by Babur?", "Who did Babur defeat?"),
    ("Who did Saladin take Jerusalem from?", "Who did Saladin take Jerusalem from in 1187?"),
    ("In which museum is The Starry Night?", "The Starry Night is in which museum?"),  # an echo question
    ("What makes bread rise?", "Why does bread rise?"),  # a cause, no operation
    ("How do I create a new branch in git?", "What's the git command to make a new branch?"),  # "to make"
    ("What foods make you gain weight?", "Which foods cause weight gain?"),  # the result after the operation
    ("What should I say when my manager asks me for a raise?",
     "What should I say when my manager asks me about a raise?"),
])
def test_round8_same_roles_are_not_refused(a, b):
    assert roles.refusal(a, b) is None
    assert roles.refusal(b, a) is None
