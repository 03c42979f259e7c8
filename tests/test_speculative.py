"""Speculative decoding (issue 7): acceptance maths, drafters, adaptive length, greedy exactness.

The rejection-sampling checks are pure numpy on a toy vocabulary with known p and q; the model
tests check that greedy speculative output equals the target's own greedy output token for token
over many prompts and lengths (verification and decoding share their arithmetic, see
core/llm/speculative/exactness.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from core.llm.sampling import SamplingParams, sample
from core.llm.speculative import (
    AdaptiveK,
    CostModel,
    ModelDrafter,
    PromptLookupDrafter,
    SpecStats,
    VerifyRow,
    accept_greedy,
    accept_sampled,
    expected_tokens,
    speculative_generate,
    speculative_step,
    target_probs,
    verify_batch,
)
from core.llm.speculative.exactness import compare, greedy_reference
from core.llm.textgen import TextGenerator

# chi-square critical values at p = 0.001 by degrees of freedom (no scipy here)
CHI2_999 = {3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


def chi2(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic over cells with expected count >= 5 (rest pooled), and its dof."""
    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    return float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1


def run_rejection(p: np.ndarray, q: np.ndarray | None, fixed_draft: list[int] | None, trials: int,
                  seed: int, accept=accept_sampled) -> tuple[list[np.ndarray], list[int]]:
    """Emitted tokens per position over many trials: counts[j] histograms position j's token,
    given the step emitted at least j+1 tokens; kept0 counts acceptances of the first draft."""
    rng = np.random.default_rng(seed)
    k, v = p.shape[0] - 1, p.shape[1]
    counts = [np.zeros(v, np.int64) for _ in range(k + 1)]
    kept0 = []
    for _ in range(trials):
        draft = fixed_draft if q is None else [int(rng.choice(v, p=q[i])) for i in range(k)]
        n, nxt = accept(draft, q, p, rng)
        for j, t in enumerate([*draft[:n], nxt]):
            counts[j][t] += 1
        kept0.append(n >= 1)
    return counts, kept0


@pytest.mark.parametrize("case", ["sampled-q", "one-hot-likely", "one-hot-unlikely"])
def test_rejection_sampling_preserves_target_distribution(case):
    rng = np.random.default_rng(1)
    k, v = 3, 8
    p = rng.dirichlet(np.ones(v) * 0.7, size=k + 1)
    if case == "sampled-q":
        q = rng.dirichlet(np.ones(v) * 0.7, size=k)
        fixed = None
    else:  # a deterministic draft (prompt lookup): q is one-hot on the drafted tokens
        q = None
        order = np.argsort(-p[:k], axis=1)
        fixed = [int(order[i, 0 if case == "one-hot-likely" else -2]) for i in range(k)]
    trials = 12000
    counts, kept0 = run_rejection(p, q, fixed, trials, seed=2)
    for j in range(k + 1):
        if counts[j].sum() < 400:  # too few steps reached this position to test it
            continue
        stat, dof = chi2(counts[j], p[j])
        assert stat < CHI2_999[min(dof, 7)], (case, j, stat, dof)
        tv = 0.5 * np.abs(counts[j] / counts[j].sum() - p[j]).sum()
        assert tv < 4 * np.sqrt(v / counts[j].sum()), (case, j, tv)
    # acceptance of the first draft is sum_x min(p(x), q(x)) (Leviathan et al., beta)
    beta = (np.minimum(p[0], q[0]).sum() if q is not None else p[0][fixed[0]])
    assert abs(np.mean(kept0) - beta) < 4 * np.sqrt(beta * (1 - beta) / trials) + 1e-3


def test_the_distribution_check_catches_a_biased_acceptor():
    """Power check: accepting every draft (no rejection) must fail the same test."""
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(8) * 0.7, size=2)
    q = rng.dirichlet(np.ones(8) * 0.7, size=1)
    counts, _ = run_rejection(p, q, None, 6000, seed=3,
                              accept=lambda d, q, p, r: (len(d), int(r.choice(8, p=p[-1]))))
    stat, dof = chi2(counts[0], p[0])
    assert stat > CHI2_999[min(dof, 7)]


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8), (1.3, 0.5)])
def test_target_probs_is_the_distribution_sample_draws_from(temperature, top_p):
    logits = np.random.default_rng(4).normal(0, 2, 6).astype(np.float32)
    params = SamplingParams(temperature=temperature, top_p=top_p)
    p = target_probs(logits, params)
    rng = np.random.default_rng(5)
    counts = np.bincount([sample(logits, params, rng) for _ in range(6000)], minlength=6)
    assert np.all(counts[p == 0] == 0)
    stat, dof = chi2(counts, p)
    assert dof < 1 or stat < CHI2_999[max(3, min(dof, 7))]


def test_greedy_acceptance_is_longest_matching_prefix_plus_target_token():
    logits = np.full((4, 10), -1.0)
    for i, best in enumerate([3, 5, 7, 9]):
        logits[i, best] = 1.0
    assert accept_greedy([3, 5, 7], logits) == (3, 9)  # all kept + bonus
    assert accept_greedy([3, 6, 7], logits) == (1, 5)  # correction at the first mismatch
    assert accept_greedy([0, 5, 7], logits) == (0, 3)
    assert accept_greedy([], logits[:1]) == (0, 3)


def test_prompt_lookup_proposes_the_continuation_of_the_longest_recent_match():
    d = PromptLookupDrafter(max_n=3)
    #          0  1  2  3  4  5  6  7  8  9
    tokens = [9, 1, 2, 3, 4, 5, 8, 1, 2, 3]
    assert d.propose(tokens, 3) == ([4, 5, 8], None)
    assert d.propose(tokens, 10)[0] == [4, 5, 8, 1, 2, 3]  # up to the end of the sequence
    assert d.propose([7, 1, 2, 8, 1, 2], 2)[0] == [8, 1]  # most recent occurrence
    assert d.propose([5, 6, 7, 8], 4) == ([], None)  # nothing matches
    assert d.propose([1, 2, 5, 2], 2)[0] == [5, 2]  # falls back to n = 1
    assert PromptLookupDrafter(min_n=2).propose([1, 2, 5, 2], 2)[0] == []


def test_expected_tokens_matches_the_geometric_formula():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert abs(expected_tokens(0.8, 3) - (1 + 0.8 + 0.64 + 0.512)) < 1e-12


def test_adaptive_k_grows_with_acceptance_and_switches_off_when_it_does_not_pay():
    # fp32 target + q4 draft on this CPU, roughly: a draft token costs ~0.45 of a target decode
    # step, each extra verified token ~0.03
    costs = CostModel(verify={0: 1.0, 1: 1.03, 8: 1.24}, draft_ratio=0.45)
    high = AdaptiveK(costs, k_max=8, alpha_prior=0.95)
    low = AdaptiveK(costs, k_max=8, alpha_prior=0.3)
    assert high.next_k() >= 4
    assert low.next_k() == 0  # drafting at 30 % acceptance costs more than it saves
    for _ in range(20):  # acceptance collapses: k shrinks to 0
        high.update(drafted=4, kept=0)
    assert high.best_k() == 0
    ks = [high.next_k() for _ in range(40)]  # off, but probing now and then (backing off)
    assert 0 < sum(k > 0 for k in ks) < 8
    for _ in range(10):  # the text turns repetitive: acceptance recovers, speculation resumes
        high.update(drafted=4, kept=4)
    assert high.next_k() >= 4
    # A free drafter (prompt lookup) pays even at modest acceptance when verifying is cheap ...
    free = CostModel(verify={0: 1.0, 1: 1.03, 12: 1.4}, draft_ratio=0.002)
    assert AdaptiveK(free, alpha_prior=0.3).next_k() >= 1
    # ... but not where extra verified tokens are dear (q4: its multi-row kernel costs ~1.6x its
    # one-row kernel already for 2 tokens)
    dear = CostModel(verify={0: 1.0, 1: 1.6, 4: 1.9, 12: 2.9}, draft_ratio=0.002)
    assert AdaptiveK(dear, alpha_prior=0.15).next_k() == 0
    # Per draft class (prompt lookup's match length): 1-gram drafts dropped, 4-gram drafts kept.
    by_n = AdaptiveK(dear, k_max=12, alpha_prior=PromptLookupDrafter.alpha_prior)
    assert by_n.next_k(1) == 0 and by_n.next_k(4) >= 2
    for _ in range(10):
        by_n.update(drafted=8, kept=0, c=4)  # this sequence's 4-gram matches turn out poor
    assert by_n.next_k(4) == 0 and by_n.alpha(3) == PromptLookupDrafter.alpha_prior[3]
    # Nothing measured yet: start at k_init; the first speculative step measures the draft cost.
    assert AdaptiveK(CostModel(), k_init=3).next_k() == 3


def test_verify_costs_are_made_non_decreasing():
    costs = CostModel(verify={0: 1.0, 1: 1.8, 2: 1.5, 3: 1.6, 6: 2.0})  # noisy measurements
    ratios = [costs.verify_ratio(k) for k in range(9)]
    assert ratios == sorted(ratios) and ratios[0] == 1.0 and ratios[8] > 2.0
    assert abs(ratios[1] - (1.8 + 1.5 + 1.6) / 3) < 1e-9


def test_cost_model_learns_ratios_from_steps():
    costs = CostModel()
    costs.observe(0, 0.0, 0.020)  # a plain step: 20 ms
    costs.observe(4, 0.040, 0.025)  # then 4 drafts in 40 ms, verified in 25 ms
    assert abs(costs.verify_ratio(4) - 1.25) < 1e-9
    assert abs(costs.draft_ratio_for() - 0.5) < 1e-9  # 10 ms per draft token / 20 ms per plain step
    costs.observe(3, 0.5 + 0.020, 0.022, catchup_s=0.5)  # a long catch-up is not a per-token cost
    assert abs(costs.draft_ratio_for() - 0.5) < 1e-6  # (0.52 - 0.5) s / 2 tokens, not 0.52 s / 3
    assert 1.0 < costs.verify_ratio(2) < costs.verify_ratio(3) < costs.verify_ratio(4) < costs.verify_ratio(6)


def test_cost_model_shrugs_off_a_slow_outlier():
    """Another process stalls one forward 5x: the median-based estimate barely moves."""
    costs = CostModel(verify={0: 1.0, 1: 1.05, 4: 1.2}, draft_ratio=0.45)
    costs.observe(0, 0.0, 0.020)
    costs.observe(1, 0.009, 0.021)
    costs.observe(0, 0.0, 0.020)
    costs.observe(1, 0.009, 0.105)  # stalled verify
    assert costs.verify_ratio(1) < 1.1 and costs.draft_ratio_for() > 0.4


# -- with the model --------------------------------------------------------------------------

QUESTIONS = [
    "Name three colours.", "What is the capital of France?", "Write a haiku about the sea.",
    "Explain photosynthesis in one paragraph.", "Give me a recipe for pancakes.", "What is 12 times 7?",
    "List the planets of the solar system.", "Why is the sky blue?", "Say hello in French.",
    "What does a compiler do?", "Write a short poem about autumn leaves.", "Who wrote Hamlet?",
    "How do I boil an egg?", "Describe a cat in two sentences.", "What is machine learning?",
    "Tell me a fun fact about octopuses.", "Suggest a name for a pet goldfish.",
]
TEXTS = [
    "The meeting has been moved from Tuesday to Thursday at 3 pm because the projector is broken.",
    "Our store will be closed on Monday for inventory. We will reopen on Tuesday at 9 am as usual.",
    "The new library opens next month. It has a large reading room, a cafe and free wifi for everyone.",
    "Please remember to water the plants in the office every Friday, and turn off the lights.",
    "The train to London leaves at 8:15 from platform 4. Tickets can be bought online or at the station.",
    "Rain is expected all weekend, so the football match on Saturday has been postponed to next week.",
    "The recipe needs two cups of flour, one egg, a cup of milk and a pinch of salt.",
]
LENGTHS = [4, 8, 12, 16, 24]


def chat_ids(chat, content: str) -> list[int]:
    return chat.encode(chat.chat_prompt([{"role": "user", "content": content}]))


@pytest.fixture(scope="module")
def prompts(generator) -> list[tuple[list[int], int]]:
    """(prompt ids, max_tokens): chat questions and rewrite requests, at several lengths."""
    chat = generator.chat
    items = [chat_ids(chat, q) for q in QUESTIONS]
    items += [chat_ids(chat, f"Rewrite this text in a formal tone:\n\n{t}") for t in TEXTS]
    return [(ids, LENGTHS[i % len(LENGTHS)]) for i, ids in enumerate(items)]


_REFERENCES: dict[tuple[str, int], tuple[list[int], list[float]]] = {}


def reference(target, ids: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    """The target's own greedy tokens and top-2 gaps, computed once per (variant, prompt)."""
    key = (target.variant, hash((tuple(ids), max_tokens)))
    if key not in _REFERENCES:
        _REFERENCES[key] = greedy_reference(target.runner, ids, max_tokens, target.chat.stop_ids)
    return _REFERENCES[key]


def check_greedy_exactness(target, prompts, make_drafter, k) -> dict:
    """Speculative greedy vs the target alone (plain one-token decoding) on every prompt: token for
    token, with no near-tie allowed (verification and decoding share their arithmetic)."""
    chat = target.chat
    threshold = 0.0
    stats, identical, near_ties, failures = SpecStats(), 0, [], []
    for ids, max_tokens in prompts:
        ref, gaps = reference(target, ids, max_tokens)
        params = SamplingParams(max_tokens=max_tokens, temperature=0)
        out = list(speculative_generate(target.runner, ids, params, chat.stop_ids, make_drafter(), k=k,
                                        stats=stats))
        c = compare(ref, gaps, out, threshold)
        identical += c.identical
        if c.near_tie:
            near_ties.append((c.first_diff, c.gap_at_diff))
        elif not c.identical:
            failures.append((chat.decode(ids[-20:]), c))
    assert not failures, failures
    assert stats.draft_tokens > 0
    print(f"{target.variant}: {identical}/{len(prompts)} identical, near-ties (position, gap): "
          f"{near_ties}, {stats.as_dict()}")
    return {"identical": identical, "near_ties": near_ties, "stats": stats}


def test_greedy_fp32_target_q4_draft_is_exact(fp32_generator, generator, prompts):
    assert len(prompts) >= 20
    res = check_greedy_exactness(fp32_generator, prompts, lambda: ModelDrafter(generator.runner), k=4)
    assert res["identical"] == len(prompts), res
    assert res["stats"].acceptance_rate > 0.6


def test_greedy_prompt_lookup_fp32_target_is_exact(fp32_generator, prompts):
    res = check_greedy_exactness(fp32_generator, prompts, PromptLookupDrafter, k=6)
    assert res["identical"] == len(prompts), res


def test_greedy_prompt_lookup_q4_target_is_exact(generator, prompts):
    # int8 activations magnify any difference between the 1-row and k-row paths into flipped
    # near-ties: this holds only because the graphs make the two paths the same arithmetic
    res = check_greedy_exactness(generator, prompts, PromptLookupDrafter, k=6)
    assert res["identical"] == len(prompts), res


def test_step_rolls_back_the_target_kv_and_the_drafter_catches_up(fp32_generator, generator):
    """After a step with a rejection, the target slot holds exactly the kept tokens (its next
    logits equal a fresh prefill's), and the drafter's next drafts equal a fresh drafter's."""
    from core.llm.kv_slots import KVSlots

    target, chat = fp32_generator.runner, fp32_generator.chat
    ids = chat_ids(chat, "Count from one to ten.")
    slots = KVSlots(target.n_layers, target.n_kv_heads, target.head_dim, 2, 256)
    slot = 1  # not slot 0: the step must touch only its own row
    n = len(ids)
    logits = target.forward_slots(slots, slot, slot + 1, np.array([ids]), np.array([n]), np.array([[n - 1]]))
    tokens = ids + [int(np.argmax(logits[0, 0]))]

    class Wrong:  # drafts the first token right, then garbage: forces a rejection at position 2
        alpha_prior = 0.5

        def propose(self, toks, k, params=None, rng=None):
            good, _ = ModelDrafter(generator.runner).propose(toks, 1)
            return good + [7] * (k - 1), None

    params = SamplingParams(temperature=0)
    r = speculative_step(target, slots, slot, tokens, Wrong(), 4, params, np.random.default_rng(0))
    assert r.drafted == 4 and r.kept <= 1 and len(r.tokens) == r.kept + 1
    tokens += r.tokens
    assert slots.lens[slot] == len(tokens) - 1 and slots.lens[0] == 0
    nxt = target.forward_slots(slots, slot, slot + 1, np.array([[tokens[-1]]]), np.array([1]),
                               np.array([[0]]))[0, 0]
    fresh = target.forward_slots(KVSlots(target.n_layers, target.n_kv_heads, target.head_dim, 1, 256),
                                 0, 1, np.array([tokens]), np.array([len(tokens)]),
                                 np.array([[len(tokens) - 1]]))[0, 0]
    assert np.abs(nxt - fresh).max() < 1e-3

    drafter = ModelDrafter(generator.runner)
    drafter.propose(tokens[:-3] + [5, 6], 4)  # sees tokens that will be "rejected"
    assert drafter.propose(tokens, 4) == ModelDrafter(generator.runner).propose(tokens, 4)
    assert drafter.cached[: len(tokens)] == tokens


def test_batched_verification_equals_one_sequence_at_a_time(fp32_generator, generator):
    """What an engine does: several sequences' drafts (different lengths, one row idle) verified
    in one forward give each sequence what its own step gives."""
    from core.llm.kv_slots import KVSlots

    target, chat = fp32_generator.runner, fp32_generator.chat
    prompts = [chat_ids(chat, "Name three colours."), chat_ids(chat, "Why is the sky blue?")]
    params, rng = SamplingParams(temperature=0), np.random.default_rng(0)

    def prefilled(n_slots, slot_of):
        slots = KVSlots(target.n_layers, target.n_kv_heads, target.head_dim, n_slots, 128)
        seqs = []
        for ids, slot in zip(prompts, slot_of, strict=True):
            lg = target.forward_slots(slots, slot, slot + 1, np.array([ids]), np.array([len(ids)]),
                                      np.array([[len(ids) - 1]]))
            seqs.append(ids + [int(np.argmax(lg[0, 0]))])
        return slots, seqs

    slots, seqs = prefilled(3, [0, 2])  # slot 1 idle
    drafts = [ModelDrafter(generator.runner).propose(seqs[0], 3)[0], [7]]
    got = verify_batch(target, slots, 0, 3, [VerifyRow(slot, seq[-1], d, None, params, rng)
                                             for slot, seq, d in zip([0, 2], seqs, drafts, strict=True)])
    assert slots.lens[1] == 0
    for i, (slot, seq) in enumerate(zip([0, 2], seqs, strict=True)):
        alone = KVSlots(target.n_layers, target.n_kv_heads, target.head_dim, 1, 128)
        target.forward_slots(alone, 0, 1, np.array([prompts[i]]), np.array([len(prompts[i])]),
                             np.array([[len(prompts[i]) - 1]]))

        class Fixed:
            def propose(self, tokens, k, params=None, rng=None, d=drafts[i]):
                return d, None

        r = speculative_step(target, alone, 0, seq, Fixed(), 4, params, rng)
        assert got[i] == (r.kept, r.tokens[-1])
        assert slots.lens[slot] == alone.lens[0] == len(seq) + r.kept


def test_batched_drafting_equals_one_sequence_at_a_time(fp32_generator):
    """propose_batch over several drafters' slots gives each what its own propose gives (an fp32
    draft model here, so float noise cannot flip a draft), including a lazy rollback and catch-up."""
    from core.llm.kv_slots import KVSlots
    from core.llm.speculative import propose_batch

    runner, chat = fp32_generator.runner, fp32_generator.chat
    seqs = [chat_ids(chat, "Name three colours."), chat_ids(chat, "Why is the sky blue?") + [504, 30]]
    slots = KVSlots(runner.n_layers, runner.n_kv_heads, runner.head_dim, 3, 256)
    drafters = [ModelDrafter(runner, slots, 0), ModelDrafter(runner, slots, 2)]
    drafters[1].propose(seqs[1][:-1] + [77], 2)  # has seen a token that was then rejected
    got = propose_batch(drafters, seqs, [3, 2])
    assert slots.lens[1] == 0
    for (drafts, q), seq, k in zip(got, seqs, [3, 2], strict=True):
        assert q is None and drafts == ModelDrafter(runner).propose(seq, k)[0]
    assert [d.cached for d in drafters] == [seqs[0] + got[0][0][:2], seqs[1] + got[1][0][:1]]


def test_sampled_speculation_is_seeded_and_well_formed(fp32_generator, generator):
    chat = fp32_generator.chat
    ids = chat_ids(chat, "Write a short poem about autumn leaves.")
    params = SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, seed=11)

    def run():
        stats = SpecStats()
        out = list(speculative_generate(fp32_generator.runner, ids, params, chat.stop_ids,
                                        ModelDrafter(generator.runner), k=3, stats=stats))
        return out, stats

    (a, stats), (b, _) = run(), run()
    assert a == b and 0 < len(a) <= 24
    assert 0 < stats.acceptance_rate <= 1 and stats.draft_tokens > 0


def test_adaptive_generation_matches_fixed_k_greedy(fp32_generator, prompts):
    """The adaptive controller changes only speed, never the greedy tokens."""
    generator = fp32_generator
    chat = generator.chat
    ids, _ = prompts[-1]
    params = SamplingParams(max_tokens=24, temperature=0)
    fixed = list(speculative_generate(generator.runner, ids, params, chat.stop_ids,
                                      PromptLookupDrafter(), k=4))
    costs = CostModel()
    stats = SpecStats()
    adaptive = list(speculative_generate(generator.runner, ids, params, chat.stop_ids,
                                         PromptLookupDrafter(), k=AdaptiveK(costs, alpha_prior=0.5),
                                         stats=stats))
    assert adaptive == fixed
    assert costs.known and stats.draft_tokens > 0


def test_parked_session_is_the_same_model(generator, llm_dir):
    """park_after_run changes only the threads' spinning, not the arithmetic."""
    runner = TextGenerator(llm_dir, "q4", threads=2, spinning=True, park_after_run=True).runner
    chat = generator.chat
    ids = chat_ids(chat, "Name three colours.")
    assert greedy_reference(runner, ids, 8, chat.stop_ids) == greedy_reference(generator.runner, ids, 8,
                                                                              chat.stop_ids)
