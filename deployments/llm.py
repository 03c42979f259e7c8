"""LLM deployment: the continuous-batching engine in a replica.

Requests are admitted in groups by a @serve.batch method, so requests that arrive together are
prefilled together; the engine thread then decodes every running sequence one step at a time,
and newcomers join at the next step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle

from core.build.artifacts import SERVED_VARIANT
from core.llm.engine import DeadlineExceeded, EngineConfig, LLMEngine, Overloaded, Sequence
from core.llm.engine.engine import StepStats
from core.llm.engine.sequence import Output
from core.llm.prefix_cache import PrefixCacheStats
from core.llm.sampling import SamplingParams
from core.llm.speculative import SpecStats
from core.llm.textgen import TextGenerator

from .draft import DraftClient
from .models import built_variant_dir, runnable_variant

LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30]


def on_niced_thread(nice: int, build: Callable[[], None]) -> None:
    """Run `build` on a thread of lower CPU priority: the threads it starts (ONNX Runtime's
    pools, the engine's stepping thread) inherit it (Linux: nice is per thread), while the
    replica's event loop keeps its own. On cores shared with the HTTP proxy and the ingress, the
    model then yields to them: a refusal or a streamed token is not queued behind a decode step."""
    def run() -> None:
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + nice)
        build()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(run).result()


class EngineMetrics:
    """Serve's metrics API: exported on Ray's Prometheus endpoint as ray_llm_*."""

    def __init__(self) -> None:
        self.tokens = metrics.Counter("llm_generated_tokens", description="tokens generated")
        self.prompt_tokens = metrics.Counter("llm_prefill_tokens", description="prompt tokens prefilled")
        self.ttft = metrics.Histogram("llm_time_to_first_token_s", description="time to first token",
                                      boundaries=LATENCY_BOUNDARIES_S)
        self.itl = metrics.Histogram("llm_inter_token_latency_s", description="time between tokens",
                                     boundaries=LATENCY_BOUNDARIES_S)
        self.batch = metrics.Histogram("llm_step_batch_size", description="sequences per model step",
                                       boundaries=[1, 2, 4, 8, 16, 32, 64], tag_keys=("kind",))
        self.running = metrics.Gauge("llm_running_sequences", description="sequences holding a KV slot")
        self.waiting = metrics.Gauge("llm_waiting_sequences", description="sequences queued for a slot")
        self.kv_bytes = metrics.Gauge("llm_kv_cache_bytes", description="KV bytes: slots + prefix cache")
        self.refusals = metrics.Counter("llm_refusals", description="requests the engine refused",
                                        tag_keys=("reason",))
        self.queue_wait = metrics.Histogram("llm_queue_wait_s", description="arrival -> KV slot",
                                            boundaries=LATENCY_BOUNDARIES_S)
        self.expected_wait = metrics.Histogram("llm_expected_wait_s", boundaries=LATENCY_BOUNDARIES_S,
                                               description="time to first token the engine expected "
                                                           "when it accepted a request")
        self.wait_ratio = metrics.Histogram("llm_actual_to_expected_wait_ratio",
                                            boundaries=[0.1, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 4, 10],
                                            description="actual / expected time to first token "
                                                        "(> 1: the estimate was short)")
        self.prefix_queried = metrics.Counter("llm_prefix_cache_queried_tokens",
                                              description="prompt tokens looked up in the prefix cache")
        self.prefix_hits = metrics.Counter("llm_prefix_cache_hit_tokens",
                                           description="prompt tokens served from the prefix cache")
        self.prefix_evictions = metrics.Counter("llm_prefix_cache_evictions",
                                                description="prefix-cache blocks evicted")
        self._seen = PrefixCacheStats()
        self.spec_drafts = metrics.Counter("llm_spec_drafts", description="verify steps with drafts")
        self.spec_draft_tokens = metrics.Counter("llm_spec_draft_tokens", description="tokens drafted")
        self.spec_accepted = metrics.Counter("llm_spec_accepted_tokens", description="drafts accepted")
        self.spec_acceptance = metrics.Gauge("llm_spec_acceptance_rate", description="accepted/drafted")
        self.spec_mean_len = metrics.Gauge("llm_spec_mean_accepted_length",
                                           description="drafts accepted per drafting step")
        self._spec_seen = SpecStats()

    def record_spec(self, stats: SpecStats) -> None:
        for counter, now, before in ((self.spec_drafts, stats.drafts, self._spec_seen.drafts),
                                     (self.spec_draft_tokens, stats.draft_tokens,
                                      self._spec_seen.draft_tokens),
                                     (self.spec_accepted, stats.accepted_tokens,
                                      self._spec_seen.accepted_tokens)):
            if now > before:
                counter.inc(now - before)
        self.spec_acceptance.set(stats.acceptance_rate)
        self.spec_mean_len.set(stats.mean_accepted_length)
        self._spec_seen = SpecStats(drafts=stats.drafts, draft_tokens=stats.draft_tokens,
                                    accepted_tokens=stats.accepted_tokens)

    def record_prefix(self, stats: PrefixCacheStats) -> None:
        """Counters from the cache's cumulative stats (called on the engine thread)."""
        for counter, now, before in ((self.prefix_queried, stats.queried_tokens, self._seen.queried_tokens),
                                     (self.prefix_hits, stats.hit_tokens, self._seen.hit_tokens),
                                     (self.prefix_evictions, stats.evictions, self._seen.evictions)):
            if now > before:  # Serve's counters reject increments of 0
                counter.inc(now - before)
        self._seen = dataclasses.replace(stats)

    def record(self, step: StepStats) -> None:
        self.batch.observe(step.batch_size, tags={"kind": step.kind})
        (self.prompt_tokens if step.kind == "prefill" else self.tokens).inc(step.tokens)
        for seconds in step.ttfts:
            self.ttft.observe(seconds)
        for seconds in step.itls:
            self.itl.observe(seconds)
        self.running.set(step.running)
        self.waiting.set(step.waiting)
        self.kv_bytes.set(step.kv_bytes)
        for seconds in step.queue_waits:
            self.queue_wait.observe(seconds)
        for expected, actual in step.estimates:
            self.expected_wait.observe(expected)
            if expected > 0:
                self.wait_ratio.observe(actual / expected)


def stream_interval_s(interval_s: float, messages_per_s: float | None, open_streams: int) -> float:
    """The fixed interval, or longer with many streams open: with a message budget for the
    replica, each of N streams sends at most budget/N messages a second. A stream's own token
    rate falls as streams are added (16 streams: ~7 tokens/s each), so a fixed 100 ms stops
    merging tokens just when the cores are shortest; the budget keeps merging them."""
    if not messages_per_s:
        return interval_s
    return max(interval_s, open_streams / messages_per_s)


class OutputQueue(asyncio.Queue):
    """One request's outputs as the engine makes them; `ended` is set when the last is in."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = asyncio.Event()

    def put_nowait(self, item: Output) -> None:
        super().put_nowait(item)
        if item.finish_reason:
            self.ended.set()


async def paced_messages(queue: OutputQueue, interval: Callable[[], float]) -> AsyncIterator[Output]:
    """One request's outputs as stream messages: the first at once, then at most one every
    `interval()` seconds carrying what came meanwhile, and the last (finish) as soon as it comes:
    held to the interval, the end of every stream waited up to 0.4 s at 16 streams, and a closed
    loop's next request with it. The wait wakes for the finish only, not for every token."""
    loop, sent_at = asyncio.get_running_loop(), None
    while True:
        out = await queue.get()
        left = sent_at + interval() - loop.time() if sent_at is not None else 0.0
        if left > 0 and not out.finish_reason:
            try:
                async with asyncio.timeout(left):
                    await queue.ended.wait()
            except TimeoutError:
                pass
        # Coalesce what queued up meanwhile: under load one message carries several tokens, so
        # the Serve streaming path does not cost a hop per token.
        while not queue.empty() and not out.finish_reason:
            more = queue.get_nowait()
            out = dataclasses.replace(more, text=out.text + more.text, logprobs=out.logprobs + more.logprobs)
        yield out
        if out.finish_reason:
            return
        sent_at = loop.time()


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
class LLMDeployment:
    def __init__(self, variant: str = SERVED_VARIANT, threads: int | None = None,
                 spinning: bool | Literal["within_run"] = False,
                 device: str = "auto", engine: dict | None = None,
                 draft_deployment: DeploymentHandle | None = None, stream_interval_ms: float = 0.0,
                 stream_messages_per_s: float | None = None, nice: int = 0) -> None:
        self.metrics = EngineMetrics()
        self.stream_interval_s = stream_interval_ms / 1000
        self.stream_messages_per_s = stream_messages_per_s
        self.open_streams = 0
        on_niced_thread(nice, lambda: self._build(variant, threads, spinning, device, engine,
                                                  draft_deployment))
        # The grammar tokenizer takes ~1 s: build it now, off the event loop, not on the first
        # constrained request.
        threading.Thread(target=lambda: self.engine.grammar_tokenizer, daemon=True).start()

    def _build(self, variant: str, threads: int | None, spinning: bool | Literal["within_run"],
               device: str, engine: dict | None, draft_deployment: DeploymentHandle | None) -> None:
        args = EngineConfig(**(engine or {}))
        local_draft = args.speculative == "model" and args.draft_placement == "replica"
        # "within_run", or two sessions alternating in one process: spin within a run, park after.
        park = local_draft or spinning == "within_run"
        spinning = bool(spinning)
        variant = runnable_variant(variant, device)
        generator = TextGenerator(built_variant_dir(variant), variant, threads=threads,
                                  spinning=spinning, device=device, park_after_run=park)
        draft = None
        if local_draft:  # draft and target in one replica: no hop per draft
            draft = TextGenerator(built_variant_dir(args.draft_variant), args.draft_variant,
                                  threads=threads, spinning=spinning, device=device,
                                  park_after_run=True).runner
        elif args.speculative == "model":
            if draft_deployment is None:
                raise ValueError("draft_placement 'deployment' needs the DraftDeployment's handle")
            draft = DraftClient(draft_deployment)
        self.engine = LLMEngine(generator.runner, generator.chat, args, draft)
        self.engine.on_step = self._on_step
        self.engine.start()

    def _on_step(self, step: StepStats) -> None:
        self.metrics.record(step)
        engine = self.engine.stats()
        if engine.prefix_cache is not None and step.kind == "prefill":
            self.metrics.record_prefix(engine.prefix_cache)
        if engine.speculative is not None and step.kind == "decode":
            self.metrics.record_spec(engine.speculative)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _admit(self, requests: list[tuple[list[int], dict, dict]]) -> list[tuple]:
        """Hand a group of requests to the engine at once; each gets its sequence and queue."""
        loop = asyncio.get_running_loop()
        admitted = []
        for prompt_ids, params, meta in requests:
            queue = OutputQueue()
            try:
                seq = self.engine.add(prompt_ids, SamplingParams(**params),
                                      lambda out, q=queue: loop.call_soon_threadsafe(q.put_nowait, out),
                                      tenant=meta.get("tenant", "default"),
                                      timeout_s=meta.get("timeout_s"))
            except Exception as exc:  # noqa: BLE001 - handed to that request's caller below
                if isinstance(exc, Overloaded):
                    self.metrics.refusals.inc(tags={"reason": exc.reason})
                seq = exc
            admitted.append((seq, queue))
        return admitted

    async def stream(self, prompt_ids: list[int], params: dict,
                     meta: dict | None = None) -> AsyncIterator[dict]:
        """meta: tenant (fair shares), timeout_s (deadline), request_id (logs)."""
        async for out in self._outputs(prompt_ids, params, meta, paced=True):
            yield out

    async def _outputs(self, prompt_ids: list[int], params: dict, meta: dict | None,
                       paced: bool) -> AsyncIterator[dict]:
        """The request's outputs as the engine makes them. paced: they leave this replica as
        Serve stream messages (`stream`), so they are held to the stream interval and counted
        in the message budget; `generate` reads them in-process, where a message costs nothing."""
        seq, queue = await self._admit((prompt_ids, params, meta or {}))
        if isinstance(seq, Exception):
            raise seq
        assert isinstance(seq, Sequence)
        self.open_streams += paced
        # At most one message per stream interval after the first token: each message costs
        # ~2 ms of CPU across ingress and proxy, taken from the model's cores.
        interval = (lambda: stream_interval_s(self.stream_interval_s, self.stream_messages_per_s,
                                              self.open_streams)) if paced else (lambda: 0.0)
        try:
            async for out in paced_messages(queue, interval):
                if out.finish_reason == "error":
                    raise RuntimeError(f"generation failed: {out.text}")
                if out.finish_reason == "timeout":
                    raise DeadlineExceeded(f"request {(meta or {}).get('request_id')} timed out")
                yield dataclasses.asdict(out)
        finally:
            self.open_streams -= paced
            if not seq.finished:  # the caller went away: stop decoding, free the slot
                self.engine.cancel(seq)

    async def generate(self, prompt_ids: list[int], params: dict, meta: dict | None = None) -> dict:
        text, logprobs, last = [], [], {}
        async for last in self._outputs(prompt_ids, params, meta, paced=False):
            text.append(last["text"])
            logprobs += last["logprobs"]
        return {**last, "text": "".join(text), "logprobs": logprobs}

    async def stream_choices(self, prompt_ids: list[int], params: list[dict],
                             meta: dict | None = None) -> AsyncIterator[dict]:
        """Several choices of one prompt (OpenAI's n), each output tagged with its `index`. The
        first choice prefills the prompt alone; the others start once its first token shows the
        prompt is in the prefix cache, and reuse it instead of prefilling it again. meta: as
        for `stream`; the choices after the first are not refused for the wait (the request was
        admitted)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        meta = meta or {}

        def add(i: int) -> Sequence:
            return self.engine.add(prompt_ids, SamplingParams(**params[i]),
                                   lambda out: loop.call_soon_threadsafe(queue.put_nowait, (i, out)),
                                   tenant=meta.get("tenant", "default"), timeout_s=meta.get("timeout_s"),
                                   check_wait=i == 0)

        seqs = [add(0)]
        try:
            first = await queue.get()
            seqs += [add(i) for i in range(1, len(params))]
            queue.put_nowait(first)
            finished = 0
            while finished < len(params):
                i, out = await queue.get()
                if out.finish_reason == "error":
                    raise RuntimeError(f"generation failed: {out.text}")
                finished += out.finish_reason is not None
                yield {**dataclasses.asdict(out), "index": i}
        finally:
            for seq in seqs:
                if not seq.finished:  # the caller went away: stop decoding, free the slot
                    self.engine.cancel(seq)

    async def generate_choices(self, prompt_ids: list[int], params: list[dict],
                               meta: dict | None = None) -> list[dict]:
        outs = [{"text": "", "logprobs": []} for _ in params]
        async for out in self.stream_choices(prompt_ids, params, meta):
            i = out["index"]
            outs[i] = {**out, "text": outs[i]["text"] + out["text"],
                       "logprobs": outs[i]["logprobs"] + out["logprobs"]}
        return outs

    def load(self) -> dict:
        """The engine's queue and expected waits: the ingress polls it to refuse early. It pools
        the snapshots of several replicas by the replica's name (serve_app/overload.py)."""
        return self.engine.load() | {"replica": serve.get_replica_context().replica_id.unique_id}

    def stats(self) -> dict:
        """Engine occupancy, for operators and tests: running/waiting sequences, KV bytes."""
        engine = self.engine.stats()
        return {"running": engine.running, "waiting": engine.waiting,
                "speculative": engine.speculative.as_dict() if engine.speculative else None,
                "kv_slot_bytes": engine.kv_slot_bytes, "prefix_cache_bytes": engine.prefix_cache_bytes}

    def check_health(self) -> None:
        if not self.engine.is_alive():
            raise RuntimeError("the engine thread has stopped")

    def __del__(self) -> None:
        self.engine.shutdown()
