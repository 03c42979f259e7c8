"""Checking the greedy exactness claim, and measuring the numerics it rests on.

Verifying k drafts runs the target over k+1 query tokens; plain decoding runs 1. The built graphs
make the two the same float arithmetic (core/build/llama.py: attention always runs on the tiled
kernel, the matmuls are row-invariant), so speculative greedy output is claimed to equal the
target's own greedy output token for token. `logit_noise` measures the difference between the two
paths (0.0 for every built variant); `compare` reports a divergence, and whether it happened at a
top-2 logit gap below a given threshold: pass the measured noise, so that only a divergence the
measured arithmetic can explain counts as a near-tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model_runner import ModelRunner


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
    near_tie: bool  # the difference is at a gap below the threshold (the measured noise)

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
