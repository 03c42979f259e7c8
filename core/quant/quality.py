"""Quality of a variant against the fp32 reference, on data the project ships (core/quant/data).

LM metrics (the fp32 outputs are computed once, in an LMReference):
  ppl_ratio      perplexity of heldout.txt (chunks of 256 tokens) over fp32's
  kl             teacher-forced KL(fp32 || variant) per token, mean, in nats
  top1           teacher-forced agreement of the argmax next token with fp32's
  greedy         64 greedy tokens per prompt of prompts.jsonl: mean fraction of the 64 that match
                 fp32's before the first divergence (an aggregate like perplexity hides such flips)
  task_accuracy  share of tasks.jsonl (hand-written, unselected) answered right, greedy, through the
                 chat template (core/quant/checker.py); with fp32's answers, a paired comparison
                 (core/quant/paired.py) and answers_identical: greedy answers token for token fp32's
Embedder metrics: cosine of each sentence's vector to fp32's, and whether each sentence's nearest
neighbour in sentences.txt stays the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..llm.chat_tokenizer import ChatTokenizer
from ..llm.model_runner import ModelRunner
from .calibration import token_chunks
from .checker import is_correct
from .paired import paired_vs_fp32

DATA = Path(__file__).parent / "data"
GREEDY_TOKENS = 64
ANSWER_TOKENS = 24  # years and sums come after a restated question: 16 cut some off


def load_jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def teacher_forced(runner: ModelRunner, chunk: list[int]) -> np.ndarray:
    """Log-probabilities [n-1, V] of the next token at every position but the last."""
    n = len(chunk)
    logits, _ = runner.forward(np.array([chunk]), [n], runner.empty_kv(), np.arange(n - 1)[None])
    return log_softmax(logits[0].astype(np.float64)).astype(np.float32)


def greedy_batch(runner: ModelRunner, prompts: list[list[int]], n_tokens: int,
                 stop_ids: set[int] = frozenset()) -> list[list[int]]:
    """Greedy continuations of all prompts at once, as right-padded rows; cut at a stop token."""
    lens = np.array([len(p) for p in prompts])
    ids = np.zeros((len(prompts), lens.max()), np.int64)
    for row, p in enumerate(prompts):
        ids[row, :len(p)] = p
    logits, kv = runner.forward(ids, lens, runner.empty_kv(len(prompts)), (lens - 1)[:, None])
    tokens = logits[:, 0].argmax(-1)
    out = [[int(t)] for t in tokens]
    for _ in range(n_tokens - 1):
        logits, kv = runner.forward(tokens[:, None], np.ones(len(prompts)), kv,
                                    np.zeros((len(prompts), 1)))
        tokens = logits[:, 0].argmax(-1)
        for row, t in enumerate(tokens):
            out[row].append(int(t))
    return [_cut(seq, stop_ids) for seq in out]


def _cut(seq: list[int], stop_ids: set[int]) -> list[int]:
    for i, t in enumerate(seq):
        if t in stop_ids:
            return seq[:i]
    return seq


def prefix_agreement(ref: list[int], seq: list[int], n: int = GREEDY_TOKENS) -> float:
    """Fraction of the first n tokens that match before the first divergence."""
    same = 0
    for a, b in zip(ref[:n], seq[:n], strict=False):
        if a != b:
            break
        same += 1
    return same / n


def answer_all(runner: ModelRunner, chat: ChatTokenizer, questions: list[dict],
               max_tokens: int = ANSWER_TOKENS, batch: int = 32) -> tuple[list[list[int]], list[bool]]:
    """Greedy answers (token ids) to the questions as one user turn each, and whether each is right."""
    prompts = [chat.encode(chat.chat_prompt([{"role": "user", "content": q["question"]}]))
               for q in questions]
    ids = []
    for start in range(0, len(prompts), batch):
        ids += greedy_batch(runner, prompts[start:start + batch], max_tokens, chat.stop_ids)
    return ids, [is_correct(chat.decode(a), q["answers"]) for a, q in zip(ids, questions, strict=True)]


def task_metrics(ref_ids: list[list[int]], ref_correct: list[bool], ids: list[list[int]],
                 correct: list[bool]) -> dict:
    same = sum(r == a for r, a in zip(ref_ids, ids, strict=True))
    return {"task_accuracy": round(sum(correct) / len(correct), 4),
            "task_correct": "".join("1" if ok else "0" for ok in correct),
            "answers_identical": f"{same}/{len(ids)}", **paired_vs_fp32(ref_correct, correct)}


@dataclass
class LMReference:
    """The fp32 model's outputs on the shipped data, computed once and compared against."""

    chunks: list[list[int]]
    logprobs: list[np.ndarray]
    nll: float
    prompts: list[list[int]]
    greedy: list[list[int]]
    questions: list[dict]
    answer_ids: list[list[int]]
    correct: list[bool]

    @classmethod
    def compute(cls, runner: ModelRunner, chat: ChatTokenizer, chunk_len: int = 256,
                max_chunks: int | None = None, max_questions: int | None = None) -> LMReference:
        chunks = token_chunks(chat.encode((DATA / "heldout.txt").read_text()), chunk_len, max_chunks)
        logprobs = [teacher_forced(runner, c) for c in chunks]
        prompts = [chat.encode(chat.chat_prompt(p["messages"])) for p in load_jsonl("prompts.jsonl")]
        questions = load_jsonl("tasks.jsonl")[:max_questions]
        return cls(chunks, logprobs, _nll(chunks, logprobs), prompts,
                   greedy_batch(runner, prompts, GREEDY_TOKENS), questions,
                   *answer_all(runner, chat, questions))

    def compare(self, runner: ModelRunner, chat: ChatTokenizer) -> dict:
        kl_sum, top1, count, variant_lp = 0.0, 0, 0, []
        for ref_lp, chunk in zip(self.logprobs, self.chunks, strict=True):
            lp = teacher_forced(runner, chunk)
            variant_lp.append(lp)
            kl_sum += float((np.exp(ref_lp) * (ref_lp - lp)).sum())
            top1 += int((ref_lp.argmax(-1) == lp.argmax(-1)).sum())
            count += len(lp)
        nll = _nll(self.chunks, variant_lp)
        greedy = greedy_batch(runner, self.prompts, GREEDY_TOKENS)
        answer_ids, correct = answer_all(runner, chat, self.questions)
        return {
            "ppl": round(float(np.exp(nll)), 3), "ppl_ratio": round(float(np.exp(nll - self.nll)), 4),
            "kl": round(kl_sum / count, 5), "top1_agreement": round(top1 / count, 4),
            "greedy_agreement": round(float(np.mean([prefix_agreement(r, s) for r, s in
                                                     zip(self.greedy, greedy, strict=True)])), 3),
            "greedy_identical": f"{sum(r == s for r, s in zip(self.greedy, greedy, strict=True))}"
                                f"/{len(greedy)}",
            **task_metrics(self.answer_ids, self.correct, answer_ids, correct),
        }


def _nll(chunks: list[list[int]], logprobs: list[np.ndarray]) -> float:
    pairs = zip(chunks, logprobs, strict=True)
    total = sum(-float(lp[np.arange(len(c) - 1), c[1:]].sum()) for c, lp in pairs)
    return total / sum(len(c) - 1 for c in chunks)


def embedder_quality(ref: np.ndarray, vecs: np.ndarray) -> dict:
    """Unit vectors [N, d] of the same sentences: cosine to fp32, nearest-neighbour stability."""
    cos = (ref * vecs).sum(-1)

    def neighbours(v: np.ndarray, k: int) -> np.ndarray:
        sim = v @ v.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1)[:, :k]

    nn_ref, nn = neighbours(ref, 5), neighbours(vecs, 5)
    overlap = [len(set(a) & set(b)) / 5 for a, b in zip(nn_ref, nn, strict=True)]
    return {"cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5),
            "nn1_same": round(float((nn_ref[:, 0] == nn[:, 0]).mean()), 3),
            "top5_overlap": round(float(np.mean(overlap)), 3)}


def load_sentences() -> list[str]:
    return [s for s in (DATA / "sentences.txt").read_text().splitlines() if s.strip()]
