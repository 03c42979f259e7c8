"""The generation engine: continuous batching over KV slots, one model step at a time.

Thread model: `add`/`cancel` may be called from any thread (the replica's event loop);
steps run on one engine thread (`start`), which reports outputs through each sequence's
`on_output` callback. Greedy output equals running the request alone: every row is computed
independently (up to float reassociation in batched kernels, see README).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..chat_tokenizer import ChatTokenizer, PromptTooLong
from ..detokenizer import StreamDecoder
from ..model_runner import ModelRunner
from ..prefix_cache import PrefixCache
from ..sampling import SamplingParams, sample
from .scheduler import Scheduler, Work
from .sequence import Output, Sequence, Status
from .speculation import DraftService, Speculation

logger = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The waiting queue is full: the caller should retry later (HTTP 503)."""


@dataclass(frozen=True)
class EngineConfig:
    max_running: int = 16  # KV slots: sequences decoding together
    max_waiting: int = 64  # queued beyond that -> Overloaded
    max_prefill_tokens: int = 512  # padded tokens per prefill step (long prompts are chunked)
    max_seq_len: int = 4096  # KV capacity per slot (prompt + generated)
    prefix_cache_bytes: int = 512 << 20  # KV kept for reuse across requests; 0 turns it off
    prefix_block_size: int = 16
    speculative: str | None = None  # None | "ngram" (prompt lookup) | "model" (needs a draft runner)
    spec_k_max: int = 8
    spec_max_batch: int = 1  # speculate only while at most this many sequences decode

    def __post_init__(self) -> None:
        for name in ("max_running", "max_prefill_tokens", "max_seq_len", "prefix_block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_waiting < 0 or self.prefix_cache_bytes < 0:
            raise ValueError("max_waiting and prefix_cache_bytes must be >= 0")
        if self.speculative not in (None, "ngram", "model"):
            raise ValueError("speculative must be None, 'ngram' or 'model'")


@dataclass(frozen=True)
class StepStats:
    kind: str
    batch_size: int
    tokens: int  # tokens fed to the model
    seconds: float
    running: int
    waiting: int
    ttfts: list[float]  # seconds, for sequences that got their first token this step
    itls: list[float]  # seconds between tokens, for sequences that got a later token
    kv_bytes: int  # KV held: running sequences plus the prefix cache


class LLMEngine:
    def __init__(self, runner: ModelRunner, chat: ChatTokenizer, config: EngineConfig,
                 draft: ModelRunner | DraftService | None = None) -> None:
        """draft: for speculative="model", the draft model here (a runner) or elsewhere (a service)."""
        self.runner, self.chat, self.config = runner, chat, config
        self.max_seq_len = min(config.max_seq_len, chat.context_length)
        self.slots = runner.make_slots(config.max_running, self.max_seq_len)
        self.scheduler = Scheduler(config.max_running, config.max_prefill_tokens)
        self.prefix_cache = (PrefixCache(config.prefix_cache_bytes, config.prefix_block_size)
                             if config.prefix_cache_bytes else None)
        self.spec = Speculation(config, runner, draft, self.slots) if config.speculative else None
        self.on_step: Callable[[StepStats], None] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- requests (any thread) ---------------------------------------------------------------
    def add(self, prompt_ids: list[int], params: SamplingParams,
            on_output: Callable[[Output], None]) -> Sequence:
        if not prompt_ids:
            raise PromptTooLong("the prompt is empty")
        if len(prompt_ids) >= self.max_seq_len:
            raise PromptTooLong(f"the prompt has {len(prompt_ids)} tokens; this deployment's "
                                f"limit is {self.max_seq_len - 1}")
        params = replace(params, max_tokens=min(params.max_tokens, self.max_seq_len - len(prompt_ids)))
        seq = Sequence(prompt_ids, params, StreamDecoder(self.chat.tokenizer, params.stop), on_output)
        with self._lock:
            if len(self.scheduler.waiting) >= self.config.max_waiting:
                raise Overloaded(f"{len(self.scheduler.waiting)} requests already waiting")
            self.scheduler.waiting.append(seq)
        self._wake.set()
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence (client gone): it leaves at the next step and frees its slot."""
        seq.cancelled = True
        self._wake.set()

    def counts(self) -> tuple[int, int]:
        """(running, waiting)"""
        return len(self.scheduler.active), len(self.scheduler.waiting)

    # -- stepping (engine thread) ------------------------------------------------------------
    def step(self) -> bool:
        with self._lock:
            for seq in [s for s in self.scheduler.active + list(self.scheduler.waiting) if s.cancelled]:
                self._finish(seq, "abort")
            for seq in self.scheduler.admit():
                self._reuse_prefix(seq)
            work = self.scheduler.next_work()
        if work is None:
            return False
        start = time.perf_counter()
        if (self.spec is not None and work.kind == "decode"
                and len(work.seqs) <= self.config.spec_max_batch):
            return self._speculative_step(work, start)
        logits = self._run(work)
        ttfts, itls = [], []
        with self._lock:
            for row, (seq, chunk) in enumerate(zip(work.seqs, work.chunks, strict=True)):
                seq.n_cached += chunk
                if seq.status is Status.PREFILLING and seq.n_cached < len(seq.prompt_ids):
                    continue  # more prompt chunks to go
                if seq.status is Status.PREFILLING:  # prompt done: share it with later requests
                    self._cache_kv(seq, seq.prompt_ids)
                seq.status = Status.DECODING
                before = seq.last_token_at
                self._emit(seq, sample(logits[row, 0], seq.params, seq.rng))
                (itls.append(seq.last_token_at - before) if before is not None
                 else ttfts.append(seq.last_token_at - seq.arrival))
            running, waiting = self.counts()
            kv_bytes = self.slots.bytes_in_use() + (self.prefix_cache.bytes_in_use
                                                    if self.prefix_cache else 0)
        if self.on_step:
            self.on_step(StepStats(work.kind, len(work.seqs), sum(work.chunks),
                                   time.perf_counter() - start, running, waiting, ttfts, itls,
                                   kv_bytes))
        return True

    def _speculative_step(self, work: Work, start: float) -> bool:
        """Draft, verify in one target forward, emit every kept token (one seq at a time)."""
        itls, emitted = [], 0
        for seq in work.seqs:
            result = self.spec.step(seq)
            with self._lock:
                before = seq.last_token_at
                for token in result.tokens:
                    if seq.finished:
                        break
                    self._emit(seq, token)
                    emitted += 1
                seq.n_cached = int(self.slots.lens[seq.slot]) if not seq.finished else seq.n_cached
                if before is not None and seq.last_token_at is not None:
                    itls.append((seq.last_token_at - before) / max(len(result.tokens), 1))
        with self._lock:
            running, waiting = self.counts()
            kv_bytes = self.slots.bytes_in_use() + (self.prefix_cache.bytes_in_use
                                                    if self.prefix_cache else 0)
        if self.on_step:
            self.on_step(StepStats("decode", len(work.seqs), emitted, time.perf_counter() - start,
                                   running, waiting, [], itls, kv_bytes))
        return True

    def _reuse_prefix(self, seq: Sequence) -> None:
        """Copy the longest cached prefix into the new sequence's slot; prefill only the rest.

        The last prompt token is always prefilled: its logits give the first new token.
        """
        if self.prefix_cache is None:
            return
        seq.prefix_blocks = self.prefix_cache.match(seq.prompt_ids[:-1])
        size = self.prefix_cache.block_size
        for i, block in enumerate(seq.prefix_blocks):
            self.slots.write(seq.slot, i * size, block.keys, block.values)
        seq.n_cached = seq.reused_tokens = len(seq.prefix_blocks) * size
        self.slots.lens[seq.slot] = seq.n_cached

    def _cache_kv(self, seq: Sequence, tokens: list[int]) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.insert(tokens, lambda a, b: self.slots.read(seq.slot, a, b))

    def _run(self, work: Work) -> np.ndarray:
        """One forward over the contiguous slot range the work's sequences span.

        Returns logits [len(work.seqs), 1, V] in the order of work.seqs.
        """
        lo = min(s.slot for s in work.seqs)
        hi = max(s.slot for s in work.seqs) + 1
        width = max(work.chunks)
        ids = np.zeros((hi - lo, width), np.int64)
        query_lens = np.zeros(hi - lo, np.int64)
        logits_idx = np.zeros((hi - lo, 1), np.int64)
        for seq, chunk in zip(work.seqs, work.chunks, strict=True):
            row = seq.slot - lo
            if work.kind == "decode":
                ids[row, 0] = seq.pending
            else:
                ids[row, :chunk] = seq.prompt_ids[seq.n_cached:seq.n_cached + chunk]
            query_lens[row] = chunk
            logits_idx[row, 0] = chunk - 1
        logits = self.runner.forward_slots(self.slots, lo, hi, ids, query_lens, logits_idx)
        return logits[[s.slot - lo for s in work.seqs]]

    def _emit(self, seq: Sequence, token: int) -> None:
        seq.last_token_at = time.perf_counter()
        if seq.first_token_at is None:
            seq.first_token_at = seq.last_token_at
        if token in self.chat.stop_ids and not seq.params.ignore_eos:
            self._finish(seq, "stop")
            return
        seq.output_ids.append(token)
        text = seq.decoder.push(token)
        if seq.decoder.stopped:
            self._finish(seq, "stop", text)
        elif len(seq.output_ids) >= seq.params.max_tokens:
            self._finish(seq, "length", text)
        else:
            seq.pending = token
            if text:
                seq.on_output(Output(text, len(seq.output_ids)))

    def _finish(self, seq: Sequence, reason: str, text: str = "") -> None:
        if seq.finished:
            return
        seq.status = Status.FINISHED
        if seq.slot >= 0:
            # The slot's KV holds every token fed so far: keep it for the next turn of this chat.
            if reason != "error":
                self._cache_kv(seq, seq.all_ids[:int(self.slots.lens[seq.slot])])
            self.slots.lens[seq.slot] = 0
        if self.prefix_cache is not None:
            self.prefix_cache.release(seq.prefix_blocks)
            seq.prefix_blocks = []
        if self.spec is not None:
            self.spec.forget(seq)
        self.scheduler.release(seq)
        if reason != "stop" or not seq.decoder.stopped:
            text += seq.decoder.flush()
        seq.on_output(Output(text, len(seq.output_ids), reason, seq.reused_tokens))

    # -- loop --------------------------------------------------------------------------------
    def start(self) -> None:
        """Step on a thread of its own. KV buffers are made resident first, so no request pays
        for their first touch (seconds for GBs of slots)."""
        self.slots.prefault()
        if self.spec is not None and self.spec.draft_slots is not None:
            self.spec.draft_slots.prefault()
        self._thread = threading.Thread(target=self._loop, name="llm-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive one bad step
                logger.exception("engine step failed; failing the sequences in flight")
                self._fail_all(exc)
                continue
            if not busy:
                self._wake.wait(timeout=0.5)
                self._wake.clear()

    def _fail_all(self, exc: Exception) -> None:
        """Every accepted request hears about a failure: none is dropped silently."""
        with self._lock:
            for seq in self.scheduler.active + list(self.scheduler.waiting):
                seq.decoder = StreamDecoder(self.chat.tokenizer)  # nothing more to release
                self._finish(seq, "error", f"{type(exc).__name__}: {exc}")

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Output]:
        """Run prompts to completion on the calling thread (tests, benchmarks)."""
        outputs: list[list[Output]] = [[] for _ in prompts]
        seqs = [self.add(p, params, outputs[i].append) for i, p in enumerate(prompts)]
        while not all(s.finished for s in seqs):
            self.step()
        return [Output("".join(o.text for o in out), out[-1].n_tokens, out[-1].finish_reason)
                for out in outputs]
