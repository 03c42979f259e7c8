"""Checking the greedy exactness claim, and measuring the numerics it rests on.

Verifying k drafts runs the target over k+1 query tokens; plain decoding runs 1. The two are the
same function but not the same float arithmetic (GEMM blocking and attention kernels differ with
the query length), so logits differ by float noise and the argmax can flip where the target's
top-2 logits are almost equal. The claim is therefore: speculative greedy output equals the
target's own greedy output token for token, except that it may diverge at a position where the
target's top-2 logit gap is below `threshold` (from `logit_noise`); from there on the two are
different (equally valid) continuations, so each sequence has at most one such divergence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model_runner import ModelRunner

# Top-2 logit gaps below which batched verification and one-token decoding may order the top
# tokens differently, per target variant: a margin above the largest change, between the two
# paths, of any top-10 token's logit relative to the top token's (`logit_noise`), measured over
# ~1900 positions (12 prompts x 40 tokens x widths 2, 3, 5, 9). bench/speculative.py re-measures it
# and reports it (bench/results/speculative.json, "noise").
#  fp32: max 3e-5 (float reassociation in GEMM / attention with the query width).
#  q4:   max 0.96. MatMulNBits with int8 activations (accuracy_level 4) runs a different kernel
#        for one query row than for several, and different again by row tiling (widths 2, 3, 6
#        agree bit for bit, as do 4, 8, 12, but not with each other); batch rows at one token each
#        take the one-row kernel. So a q4 target's verification is not its decode arithmetic.
GAP_THRESHOLD = {"fp32": 2e-4, "q4": 1.25}


def top2_gap(logits: np.ndarray) -> float:
    top = np.partition(logits, -2)[-2:]
    return float(top[1] - top[0])


def greedy_reference(runner: ModelRunner, prompt: list[int], max_tokens: int,
                     stop_ids: set[int]) -> tuple[list[int], list[float]]:
    """The target alone, one token per forward (the plain decode path): the tokens, and the top-2
    logit gap of the logits each was chosen from (plus the stop token's, when it stopped)."""
    slots = runner.make_slots(1, len(prompt) + max_tokens + 1)
    ids, gaps = list(prompt), []
    out: list[int] = []
    new = list(prompt)
    while len(out) < max_tokens:
        logits = runner.forward_slots(slots, 0, 1, np.array([new]), np.array([len(new)]),
                                      np.array([[len(new) - 1]]))[0, 0]
        token = int(np.argmax(logits))
        gaps.append(top2_gap(logits))  # also for a stop token: a divergence can be there
        if token in stop_ids:
            break
        out.append(token)
        ids.append(token)
        new = [token]
    return out, gaps


@dataclass
class Comparison:
    identical: bool  # token for token, over the common length, and the same length
    first_diff: int | None  # index into the outputs of the first differing token
    gap_at_diff: float | None  # target's top-2 gap there (plain decode logits)
    near_tie: bool  # the difference is at a gap below the threshold (allowed by the claim)

    @property
    def ok(self) -> bool:
        return self.identical or self.near_tie


def compare(reference: list[int], gaps: list[float], candidate: list[int], threshold: float) -> Comparison:
    n = min(len(reference), len(candidate))
    diff = next((i for i in range(n) if reference[i] != candidate[i]), None)
    if diff is None and len(reference) != len(candidate):
        diff = n  # one stopped where the other went on: a difference at position n
    if diff is None:
        return Comparison(True, None, None, False)
    # If the reference stopped at `diff`, its stop token's gap was not recorded: treat as unknown.
    gap = gaps[diff] if diff < len(gaps) else None
    return Comparison(False, diff, gap, gap is not None and gap < threshold)


def logit_noise(runner: ModelRunner, prompt: list[int], continuation: list[int], width: int,
                top: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Score `continuation` in forwards of `width` tokens (as verification does) and one token at a
    time (as plain decoding does). Per position: the max |logit difference| over the vocabulary,
    and the largest change, among the one-token path's top `top` tokens, of a token's logit
    relative to the top token's (how much a competitor can gain on the leader: the argmax can
    flip only where the top-2 gap is below it)."""
    seq = list(prompt) + list(continuation)
    cap = len(seq) + 1
    one = runner.make_slots(1, cap)
    many = runner.make_slots(1, cap)
    n = len(prompt)
    for s in (one, many):
        runner.forward_slots(s, 0, 1, np.array([prompt]), np.array([n]), np.array([[n - 1]]))
    single = [runner.forward_slots(one, 0, 1, np.array([[t]]), np.array([1]), np.array([[0]]))[0, 0]
              for t in continuation]
    batched = []
    for lo in range(0, len(continuation), width):
        chunk = continuation[lo:lo + width]
        batched.extend(runner.forward_slots(many, 0, 1, np.array([chunk]), np.array([len(chunk)]),
                                            np.arange(len(chunk))[None])[0])
    max_abs, gain = [], []
    for x, y in zip(single, batched, strict=True):
        max_abs.append(float(np.abs(x - y).max()))
        cand = np.argsort(-x)[:top]
        rel_x, rel_y = x[cand] - x[cand[0]], y[cand] - y[cand[0]]
        gain.append(float(np.abs(rel_y - rel_x).max()))
    return np.array(max_abs), np.array(gain)
