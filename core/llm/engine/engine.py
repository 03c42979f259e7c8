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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..chat_tokenizer import ChatTokenizer, PromptTooLong
from ..constraint import GrammarTokenizer
from ..detokenizer import StreamDecoder
from ..model_runner import ModelRunner
from ..prefix_cache import PrefixCache, PrefixCacheStats
from ..sampling import SamplingParams
from ..speculative import SpecStats
from .admission import Overloaded, Pending, QueueState, Throughput, queue_state, retry_after_s
from .rows import pick_token
from .scheduler import Scheduler, Work
from .sequence import Output, Sequence, Status
from .speculation import DraftService, Speculation

logger = logging.getLogger(__name__)
CALIBRATION_MARGIN = 1.5


class EngineConfig(BaseModel):
    """Engine limits and speculation, validated when built: `engine:` in the app's args."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_running: int = Field(16, ge=1, le=256, description="KV slots: sequences decoding together")
    max_waiting: int = Field(64, ge=0, description="queued beyond that -> Overloaded")
    max_prefill_tokens: int = Field(512, ge=16, description="padded tokens per prefill step "
                                                            "(long prompts are chunked)")
    max_seq_len: int = Field(4096, ge=64, description="KV capacity per slot (prompt + generated)")
    prefix_cache_bytes: int = Field(512 << 20, ge=0, description="KV kept for reuse across "
                                    "requests; 0 = off. Configs give it in MiB: prefix_cache_mb")
    prefix_block_size: int = Field(16, ge=1, le=256)
    speculative: Literal["ngram", "model"] | None = Field(
        None, description="speculative decoding: prompt lookup, or a draft model (draft_variant)")
    draft_variant: str = Field("q4", description="built LM variant that drafts for the target")
    draft_placement: Literal["replica", "deployment"] = Field(
        "replica", description="draft model in the target's replica (no hop per step), or its own "
                               "deployment (other hardware: e.g. a CPU draft for a GPU target)")
    spec_k_max: int = Field(8, ge=1, le=16)
    spec_max_batch: int = Field(1, ge=1, description="speculate while at most this many decode")
    max_queue_wait_s: float | None = Field(
        10.0, gt=0, description="refuse (Overloaded) a request whose expected wait for its first "
                                "token is longer; None = refuse only on a full queue")
    tenant_weights: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="slot shares between tenants (API keys) when several "
                                          "wait; '*' = any other tenant; default 1 each")
    tenant_queue_share: float = Field(
        0.5, gt=0, le=1, description="while other tenants use the engine, one tenant may hold at "
                                     "most this fraction of max_waiting")

    @model_validator(mode="before")
    @classmethod
    def _prefix_cache_mb(cls, data: Any) -> Any:
        """Configs size the prefix cache in MiB (`prefix_cache_mb`); code may give bytes."""
        if isinstance(data, dict) and "prefix_cache_mb" in data:
            data = dict(data)
            mb = data.pop("prefix_cache_mb")
            if "prefix_cache_bytes" in data:
                raise ValueError("give prefix_cache_mb or prefix_cache_bytes, not both")
            if not isinstance(mb, int) or isinstance(mb, bool):
                raise ValueError("prefix_cache_mb must be a whole number of MiB")
            data["prefix_cache_bytes"] = mb << 20  # a negative size stays negative: refused
        return data


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
    queue_waits: list[float] = field(default_factory=list)  # arrival -> slot, admitted this step
    estimates: list[tuple[float, float]] = field(default_factory=list)  # (expected, actual) TTFT


@dataclass(frozen=True)
class EngineStats:
    """What operators and metrics read of a running engine."""

    running: int
    waiting: int
    kv_slot_bytes: int
    prefix_cache_bytes: int
    prefix_cache: PrefixCacheStats | None  # cumulative; None: prefix cache off
    speculative: SpecStats | None  # cumulative; None: no speculative decoding


class LLMEngine:
    def __init__(self, runner: ModelRunner, chat: ChatTokenizer, config: EngineConfig,
                 draft: ModelRunner | DraftService | None = None) -> None:
        """draft: for speculative="model", the draft model here (a runner) or elsewhere (a service)."""
        self.runner, self.chat, self.config = runner, chat, config
        self.max_seq_len = min(config.max_seq_len, chat.context_length)
        self.slots = runner.make_slots(config.max_running, self.max_seq_len)
        self.scheduler = Scheduler(config.max_running, config.max_prefill_tokens,
                                   config.tenant_weights)
        self.speed = Throughput()
        self.prefix_cache = (PrefixCache(config.prefix_cache_bytes, config.prefix_block_size)
                             if config.prefix_cache_bytes else None)
        self.spec = Speculation(config, runner, draft, self.slots) if config.speculative else None
        self.on_step: Callable[[StepStats], None] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._masks = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")

    @cached_property
    def grammar_tokenizer(self) -> GrammarTokenizer:
        """Built on the first constrained request (~1 s), then shared by every matcher."""
        return GrammarTokenizer(self.chat.tokenizer.to_str(), self.chat.stop_ids)

    # -- requests (any thread) ---------------------------------------------------------------
    def add(self, prompt_ids: list[int], params: SamplingParams,
            on_output: Callable[[Output], None], tenant: str = "default",
            timeout_s: float | None = None, check_wait: bool = True) -> Sequence:
        """Queue a request, or raise Overloaded at once. `timeout_s`: the request ends (finish
        reason "timeout") if it has not finished by then, waiting or running. check_wait=False:
        no refusal by expected wait (offline batches, which wait by design)."""
        if not prompt_ids:
            raise PromptTooLong("the prompt is empty")
        if len(prompt_ids) >= self.max_seq_len:
            raise PromptTooLong(f"the prompt has {len(prompt_ids)} tokens; this deployment's "
                                f"limit is {self.max_seq_len - 1}")
        params = replace(params, max_tokens=min(params.max_tokens, self.max_seq_len - len(prompt_ids)))
        decoder = StreamDecoder(self.chat.tokenizer, params.stop, params.stop_at_repeat)
        seq = Sequence(prompt_ids, params, decoder, on_output, tenant=tenant)
        if params.grammar is not None:
            seq.constraint = self.grammar_tokenizer.matcher(params.grammar)
        if timeout_s is not None:
            seq.deadline = seq.arrival + timeout_s
        with self._lock:
            self._check_admission(seq, check_wait)
            self.scheduler.waiting.append(seq)
        self._wake.set()
        return seq

    def _check_admission(self, seq: Sequence, check_wait: bool) -> None:
        """Raise Overloaded if the queue is full (for this tenant) or the wait too long."""
        waiting, tenant = self.scheduler.waiting, seq.tenant
        limit = self.config.max_waiting
        mine = waiting.count(tenant)
        others = len(waiting) > mine or any(s.tenant != tenant for s in self.scheduler.active)
        if others and mine >= max(1, int(limit * self.config.tenant_queue_share)):
            raise Overloaded(f"this key already has {mine} requests waiting", 1, "tenant_queue_full")
        n_tenants = len(set(waiting.queues) | {tenant})
        # A full queue still takes a tenant holding less than an even split of it: the flood that
        # filled it while alone cannot lock the others out (over by at most that split).
        if len(waiting) >= limit and (limit == 0 or mine >= max(1, limit // n_tenants)):
            raise Overloaded(f"{len(waiting)} requests already waiting", 1, "queue_full")
        seq.expected_wait_s = self._expected_wait(tenant, len(seq.prompt_ids))
        max_wait = self.config.max_queue_wait_s
        if check_wait and max_wait is not None and seq.expected_wait_s > max_wait:
            raise Overloaded(f"expected wait {seq.expected_wait_s:.1f}s exceeds {max_wait:g}s",
                             retry_after_s(seq.expected_wait_s, max_wait), "expected_wait")

    def _expected_wait(self, tenant: str, prompt_tokens: int) -> float:
        return self._queue_state(tenant).wait(prompt_tokens, self.config.max_running,
                                              self.speed.step_s, self.speed.prefill_tok_s)

    def _queue_state(self, tenant: str) -> QueueState:
        """The queue a new request of `tenant` joins (fair shares decide what is ahead of it)."""
        def left(s: Sequence) -> int:
            return s.params.max_tokens - len(s.output_ids)

        running = [Pending(len(s.all_ids) - s.n_cached if s.status is Status.PREFILLING else 0,
                           left(s)) for s in self.scheduler.active]
        if self.scheduler.entitled(tenant):
            # below its share: a slot now (free, or handed over), behind only its own queue
            running = [Pending(p.prefill, 0) for p in running]
            ahead = [Pending(len(s.all_ids), left(s)) for s in self.scheduler.waiting.queues.get(tenant, [])]
        else:
            ahead = [Pending(len(s.all_ids), left(s)) for s in self.scheduler.waiting.ahead_of_new(tenant)]
        return queue_state(running, ahead, self.config.max_running)

    def load(self, tenants: list[str] = ()) -> dict:
        """A cheap snapshot for the ingress to refuse before a hop: per tenant ("*": a tenant
        with nothing queued) the queue a new request joins and its expected wait, and the speeds
        to turn more requests into a wait (the ingress adds those it sent since)."""
        slots = self.config.max_running
        with self._lock:
            waiting = self.scheduler.waiting
            names = set(tenants) | set(waiting.queues) | {s.tenant for s in self.scheduler.active}
            queues = {t: self._queue_state(t) for t in names | {"*"}}
            step_s = [self.speed.step_s(b) for b in range(1, slots + 1)]
            return {"running": len(self.scheduler.active), "waiting": len(waiting),
                    "max_queue_wait_s": self.config.max_queue_wait_s,
                    "expected_wait_s": {t: q.wait(0, slots, self.speed.step_s, self.speed.prefill_tok_s)
                                        for t, q in queues.items()},
                    "queues": {t: asdict(q) for t, q in queues.items()},
                    "prefill_tok_s": self.speed.prefill_tok_s, "decode_step_s": self.speed.decode_step_s,
                    "step_s": step_s, "slots": slots}

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence (client gone): it leaves at the next step and frees its slot."""
        seq.cancelled = True
        self._wake.set()

    def counts(self) -> tuple[int, int]:
        """(running, waiting)"""
        return len(self.scheduler.active), len(self.scheduler.waiting)

    def stats(self) -> EngineStats:
        with self._lock:
            running, waiting = self.counts()
            return EngineStats(running, waiting, self.slots.bytes_in_use(), self._prefix_cache_bytes(),
                               self.prefix_cache.stats if self.prefix_cache else None,
                               self.spec.stats if self.spec else None)

    def is_alive(self) -> bool:
        """The engine thread is stepping (started and not dead)."""
        return self._thread is not None and self._thread.is_alive()

    def _prefix_cache_bytes(self) -> int:
        return self.prefix_cache.bytes_in_use if self.prefix_cache else 0

    # -- stepping (engine thread) ------------------------------------------------------------
    def step(self) -> bool:
        with self._lock:
            now = time.perf_counter()
            for seq in self.scheduler.active + list(self.scheduler.waiting):
                if seq.cancelled:
                    self._finish(seq, "abort")
                elif seq.deadline is not None and now >= seq.deadline:
                    self._finish(seq, "timeout")  # before its prefill, if it still waits
            queue_waits, handed = [], []
            for paused, tenant in self.scheduler.preemptions():
                self._pause(paused)
                handed.append(self.scheduler.hand_over(paused, tenant))
            for seq in handed + self.scheduler.admit():
                if not seq.output_ids:  # a resumed sequence waited before: counted then
                    queue_waits.append(now - seq.arrival)
                self._reuse_prefix(seq)
            work = self.scheduler.next_work()
        if work is None:
            return False
        start = time.perf_counter()
        if (self.spec is not None and work.kind == "decode"
                and len(work.seqs) <= self.config.spec_max_batch
                and all(s.params.plain for s in work.seqs)):  # drafts would bypass bias/grammar
            return self._speculative_step(work, start)
        masks = self._grammar_masks(work)  # computed while the model runs
        logits = self._run(work)
        allowed = masks.result() if masks is not None else {}
        ttfts, itls, estimates = [], [], []
        with self._lock:
            for row, (seq, chunk) in enumerate(zip(work.seqs, work.chunks, strict=True)):
                seq.n_cached += chunk
                if seq.status is Status.PREFILLING and seq.n_cached < len(seq.all_ids):
                    continue  # more prompt chunks to go
                if seq.status is Status.PREFILLING:  # prompt done: share it with later requests
                    self._cache_kv(seq, seq.all_ids)
                seq.status = Status.DECODING
                before = seq.last_token_at
                self._emit(seq, pick_token(seq, logits[row, 0], allowed.get(seq.seq_id),
                                           self.chat.stop_ids))
                if before is not None:
                    itls.append(seq.last_token_at - before)
                else:
                    ttfts.append(seq.last_token_at - seq.arrival)
                    if seq.expected_wait_s is not None:
                        estimates.append((seq.expected_wait_s, ttfts[-1]))
            running, waiting = self.counts()
            kv_bytes = self.slots.bytes_in_use() + self._prefix_cache_bytes()
        if self.on_step:
            self.on_step(StepStats(work.kind, len(work.seqs), sum(work.chunks),
                                   time.perf_counter() - start, running, waiting, ttfts, itls,
                                   kv_bytes, queue_waits, estimates))
        # the whole step (sampling, detokenizing, callbacks, metrics): its period, not the forward
        self.speed.observe(work.kind, sum(work.chunks), time.perf_counter() - start)
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
        self.speed.observe("decode", len(work.seqs), time.perf_counter() - start)
        with self._lock:
            running, waiting = self.counts()
            kv_bytes = self.slots.bytes_in_use() + self._prefix_cache_bytes()
        if self.on_step:
            self.on_step(StepStats("decode", len(work.seqs), emitted, time.perf_counter() - start,
                                   running, waiting, [], itls, kv_bytes))
        return True

    def _grammar_masks(self, work: Work) -> Future | None:
        """The allowed-token masks of the constrained rows, on a worker thread (llguidance and
        ONNX Runtime both release the GIL)."""
        rows = [s for s in work.seqs if s.constraint is not None]
        if not rows:
            return None
        return self._masks.submit(lambda: {s.seq_id: s.constraint.allowed() for s in rows})

    def _reuse_prefix(self, seq: Sequence) -> None:
        """Copy the longest cached prefix into the new sequence's slot; prefill only the rest.

        The last prompt token is always prefilled: its logits give the first new token.
        """
        if self.prefix_cache is None:
            return
        seq.prefix_blocks = self.prefix_cache.match(seq.all_ids[:-1])
        size = self.prefix_cache.block_size
        for i, block in enumerate(seq.prefix_blocks):
            self.slots.write(seq.slot, i * size, block.keys, block.values)
        seq.n_cached = len(seq.prefix_blocks) * size
        if not seq.output_ids:  # usage counts prompt tokens served from the cache, once
            seq.reused_tokens = seq.n_cached
        self.slots.lens[seq.slot] = seq.n_cached

    def _pause(self, seq: Sequence) -> None:
        """Free a decoding sequence's slot for another tenant (scheduler.preemptions). Its KV
        goes to the prefix cache, so resuming it (prompt + output so far, prefilled again)
        mostly copies blocks back; without a prefix cache it is recomputed."""
        self._vacate(seq, keep_kv=True)

    def _vacate(self, seq: Sequence, keep_kv: bool) -> None:
        """Empty the sequence's slot (its KV kept in the prefix cache if asked: every token fed
        so far, reusable by the next turn of this chat) and drop what it held elsewhere."""
        if seq.slot >= 0:
            if keep_kv:
                self._cache_kv(seq, seq.all_ids[:int(self.slots.lens[seq.slot])])
            self.slots.lens[seq.slot] = 0
        if self.prefix_cache is not None:
            self.prefix_cache.release(seq.prefix_blocks)
            seq.prefix_blocks = []
        if self.spec is not None:
            self.spec.forget(seq)

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
            else:  # a resumed sequence's prefill re-feeds its output, the pending token last
                ids[row, :chunk] = seq.all_ids[seq.n_cached:seq.n_cached + chunk]
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
        if seq.last_logprob is not None:
            seq.logprobs.append(seq.last_logprob)
            seq.last_logprob = None
        text = seq.decoder.push(token)
        if seq.decoder.stopped:
            self._finish(seq, "stop", text)
        elif len(seq.output_ids) >= seq.params.max_tokens:
            self._finish(seq, "length", text)
        else:
            seq.pending = token
            if text:
                seq.on_output(Output(text, len(seq.output_ids), logprobs=self._take_logprobs(seq)))

    def _finish(self, seq: Sequence, reason: str, text: str = "") -> None:
        if seq.finished:
            return
        seq.status = Status.FINISHED
        self._vacate(seq, keep_kv=reason != "error")
        self.scheduler.release(seq)
        if reason != "stop" or not seq.decoder.stopped:
            text += seq.decoder.flush()
        seq.on_output(Output(text, len(seq.output_ids), reason, seq.reused_tokens,
                             self._take_logprobs(seq)))

    @staticmethod
    def _take_logprobs(seq: Sequence) -> list:
        taken, seq.logprobs = seq.logprobs, []
        return taken

    # -- loop --------------------------------------------------------------------------------
    def start(self) -> None:
        """Step on a thread of its own. KV buffers are made resident first, so no request pays
        for their first touch (seconds for GBs of slots)."""
        self.slots.prefault()
        if self.spec is not None and self.spec.draft_slots is not None:
            self.spec.draft_slots.prefault()
        self._calibrate()
        self._thread = threading.Thread(target=self._loop, name="llm-engine", daemon=True)
        self._thread.start()

    def _calibrate(self) -> None:
        """Time a decode step at batch 1 and at full batch, and one full prefill chunk, so the
        first burst is admitted on this machine's speed rather than on priors (~0.1-1 s). A bare
        forward lacks a served step's sampling, callbacks and streaming: CALIBRATION_MARGIN (a
        small overload run on a busy CPU waited ~1.4x what bare forwards predicted), until real
        steps replace it."""
        n = self.config.max_running
        chunk = min(self.config.max_prefill_tokens, self.max_seq_len - 1)
        for kind, rows, width in (("decode", 1, 1), ("decode", 1, 1), ("decode", n, 1),
                                  ("decode", n, 1), ("prefill", 1, chunk)):
            start = time.perf_counter()
            self.runner.forward_slots(self.slots, 0, rows, np.zeros((rows, width), np.int64),
                                      np.full(rows, width, np.int64), np.full((rows, 1), width - 1))
            self.slots.lens[:] = 0  # nothing of it is kept
            self.speed.observe(kind, rows * width, (time.perf_counter() - start) * CALIBRATION_MARGIN)

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        self._masks.shutdown(wait=False)

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
        seqs = [self.add(p, params, outputs[i].append, check_wait=False) for i, p in enumerate(prompts)]
        while not all(s.finished for s in seqs):
            self.step()
        return [Output("".join(o.text for o in out), out[-1].n_tokens, out[-1].finish_reason,
                       logprobs=[lp for o in out for lp in o.logprobs])
                for out in outputs]
