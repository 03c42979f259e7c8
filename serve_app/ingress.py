"""HTTP ingress: OpenAI-compatible routes in front of the cache, LLM and embedder deployments.

A generation's path, top to bottom: the route -> ResponseCacheClient (near cache, cache replica)
-> the LLM deployment's handle -> its engine; the answer goes back in the OpenAI wire format
(openai_format) and to the cache after it was sent.
"""

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from core.build.artifacts import EMBEDDER_ID, LLM_ID, build_llm
from core.llm.chat_tokenizer import ChatTokenizer, PromptTooLong

from .auth import load_keys, tenant_for
from .cache_front import LOOKED_UP, request_timeout
from .choices import ChoiceBuilder
from .early_refusal import EarlyRefusal
from .errors import (
    APIError,
    install_error_handlers,
    model_not_found,
    request_id,
    serving_error,
    stream_error,
)
from .gate import Gate
from .logprobs import TokenTexts
from .merged_streams import merged
from .openai_format import Endpoint, Reply, sse, usage
from .overload import IngressMetrics, LoadView
from .quotas import QuotaArgs, Quotas
from .response_cache import CachePlan, Lookup, ResponseCacheClient, cached_response
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    SamplingFields,
)
from .structured import Structure, chat_messages, structure_for

logger = logging.getLogger("ray.serve")
app = FastAPI(title="effserve", description="Efficient LLM and embedding inference on Ray Serve")
install_error_handlers(app)
app.add_middleware(EarlyRefusal)  # outermost: refusals before the body is read


@dataclass(frozen=True)
class _Ctx:
    """What a generation's error and quota paths need to know about it."""

    tenant: str
    max_tokens: int  # reserved against the tenant's token quota: every choice's budget
    arrived: float
    meta: dict  # to the LLM deployment: tenant, request_id, timeout_s


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class Ingress:
    def __init__(self, llm: DeploymentHandle, embedder: DeploymentHandle,
                 cache: DeploymentHandle | None, llm_variant: str,
                 api_keys: dict[str, str] | None = None, near_cache_entries: int = 0,
                 max_queue_wait_s: float | None = None,
                 quotas: dict[str, dict] | None = None, admission_secret: str | None = None,
                 proxy_refusal: bool = True) -> None:
        self.llm, self.embedder, self.llm_variant = llm, embedder, llm_variant
        self.cache = ResponseCacheClient(cache, near_cache_entries) if cache is not None else None
        self.near_cache_entries = near_cache_entries
        self.keys = load_keys(api_keys)
        self.chat = ChatTokenizer(build_llm(progress=lambda _: None))
        self.max_queue_wait_s, self.quota_args = max_queue_wait_s, quotas or {}
        self.proxy_refusal = proxy_refusal
        self.load = LoadView(llm, max_queue_wait_s)
        self.quotas = Quotas({t: QuotaArgs(**q) for t, q in self.quota_args.items()})
        self.metrics = IngressMetrics()
        # refusals from the headers (EarlyRefusal); the secret marks what Serve's proxy admitted
        # (one per app, from build_graph, so every replica trusts the same proxy)
        self.gate = Gate(self.keys, self.quotas, self.load, self.metrics,
                         admission_secret or secrets.token_urlsafe(24))
        self.token_texts = TokenTexts(self.chat.tokenizer)

    def refusal_settings(self) -> dict:
        """What Serve's proxy needs to refuse as this replica would (proxy_refusal.py): called
        through a handle, inside the cluster. Quota buckets are counted where they are spent:
        requests in the proxy, tokens here. Small: a cold burst waits for it."""
        return {"keys": self.keys, "quotas": self.quota_args, "max_queue_wait_s": self.max_queue_wait_s,
                "secret": self.gate.secret, "llm": self.llm, "proxy_refusal": self.proxy_refusal}

    def cache_front_settings(self) -> dict:
        """What Serve's proxy needs to answer cache hits (cache_front.py): the cache's handle and
        the chat tokenizer (~1.5 MB), read once per deploy, after the refusal settings; no cache,
        nothing to send."""
        if self.cache is None:
            return {"cache": None}
        return {"cache": self.cache.cache, "near_cache_entries": self.near_cache_entries, "chat": self.chat}

    # -- generation, cached or not -----------------------------------------------------------
    async def _generation(self, request: Request, endpoint: Endpoint, req: SamplingFields,
                          prompts: Callable[[], list[str]], max_tokens: int, param: str,
                          structure: Structure | None = None):
        """prompts: renders the prompts (a chat template) once the request is not refused."""
        arrived = time.perf_counter()
        structure = structure or Structure()
        tenant = tenant_for(request.headers.get("authorization"), self.keys)
        if req.model != LLM_ID:
            raise model_not_found(req.model, LLM_ID)
        # quota and early refusal: the Gate, before the body was read
        timeout_s = request_timeout(request.headers)
        prompt_ids = [self._tokenize(p, param) for p in prompts()]
        budget = max_tokens * req.n * len(prompt_ids)  # every choice may use all of max_tokens
        prompt_tokens = sum(len(ids) for ids in prompt_ids)
        reservation = request.scope.get("state", {}).get("reservation")
        self.quotas.spend_tokens(tenant, prompt_tokens + budget)
        meta = {"tenant": tenant, "request_id": request_id(request),
                "timeout_s": None if timeout_s is None else timeout_s - (time.perf_counter() - arrived)}
        ctx = _Ctx(tenant, budget, arrived, meta)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        reply = Reply(endpoint)
        plan = self.cache.plan(request.headers, endpoint, req, tenant) if self.cache else CachePlan()
        found = await self._lookup(request, plan)
        if found.body is not None:
            self.quotas.give_back(tenant, budget)  # a cached answer costs no generation
            return cached_response(endpoint, found, req.stream, include_usage)
        self.load.sent(reservation, prompt_tokens, budget)  # to the engine now, at its real size
        runs = self._runs(endpoint, req, prompt_ids, max_tokens, structure)
        builders = [ChoiceBuilder(i, endpoint, self.token_texts, runs[0][1][0]["logprobs"] is not None,
                                  bool(structure.tools)) for i in range(len(runs) * req.n)]
        if req.stream:
            return await self._stream(reply, runs, builders, prompt_tokens, include_usage, param,
                                      plan, found, ctx)
        try:  # a prompt's n choices go to one replica together: they share its prefill there
            per_prompt = await asyncio.gather(*[
                self.llm.generate_choices.remote(ids, ps, meta) if len(ps) > 1
                else self.llm.generate.remote(ids, ps[0], meta) for ids, ps in runs])
        except Exception as exc:
            raise self._failed(exc, param, ctx) from exc
        outs = [out for got in per_prompt for out in (got if isinstance(got, list) else [got])]
        generated = sum(o["n_tokens"] for o in outs)
        self.quotas.give_back(tenant, budget - generated)
        body = reply.body([b.whole(out) for b, out in zip(builders, outs, strict=True)],
                          usage(prompt_tokens, generated,
                                min(sum(o["cached_tokens"] for o in outs), prompt_tokens)))
        if plan.keys is not None:
            self.cache.store_later(plan.keys, found.embedding, body)
        return JSONResponse(body, headers={"x-cache": "miss"})

    async def _lookup(self, request: Request, plan: CachePlan) -> Lookup:
        """The cache's answer; a miss Serve's proxy already looked up (cache_front.py) is not
        looked up again: its embedding comes along, to store the answer under."""
        if not plan.look_up or self.cache is None:
            return Lookup()
        looked = request.scope.get(LOOKED_UP)
        if looked is not None and plan.keys is not None and looked["exact"] == plan.keys.exact:
            return Lookup(embedding=looked["embedding"])
        return await self.cache.lookup(plan.keys)

    def _runs(self, endpoint: Endpoint, req: SamplingFields, prompt_ids: list[list[int]],
              max_tokens: int, structure: Structure) -> list[tuple[list[int], list[dict]]]:
        """(prompt ids, engine params of its n choices) per prompt; choices are numbered in this
        order. Choice j of a seeded request samples with seed + j: reproducible, not n copies."""
        vocab = self.chat.tokenizer.get_vocab_size()
        bias = {int(k): v for k, v in (req.logit_bias or {}).items()}
        if any(token >= vocab for token in bias):
            raise APIError(400, f"logit_bias has a token id beyond the vocabulary ({vocab})", "logit_bias")
        if endpoint == "chat":
            top = (req.top_logprobs or 0) if req.logprobs else None
        else:
            top = req.logprobs
        params = {"max_tokens": max_tokens, "temperature": req.temperature, "top_p": req.top_p,
                  "stop": req.stop_list(), "ignore_eos": req.ignore_eos,
                  "presence_penalty": req.presence_penalty, "frequency_penalty": req.frequency_penalty,
                  "logit_bias": bias, "logprobs": top, **structure.params()}
        return [(ids, [{**params, "seed": None if req.seed is None else req.seed + j}
                       for j in range(req.n)]) for ids in prompt_ids]

    def _failed(self, exc: Exception, param: str, ctx: _Ctx) -> Exception:
        """The HTTP error for a failed generation; refusals are counted by reason."""
        self.quotas.give_back(ctx.tenant, ctx.max_tokens)
        mapped = serving_error(exc, param)
        if isinstance(mapped, APIError) and mapped.status in (503, 504):
            self.metrics.refused(getattr(exc, "reason", mapped.code), time.perf_counter() - ctx.arrived)
        if isinstance(mapped, APIError) and mapped.status >= 500:
            logger.warning("request %s: %s", ctx.meta["request_id"], mapped.code, exc_info=exc)
        return mapped

    def _tokenize(self, prompt: str, param: str) -> list[int]:
        ids = self.chat.encode(prompt)
        try:
            self.chat.check_fits(ids)
        except PromptTooLong as exc:
            raise APIError(400, str(exc), param, "context_length_exceeded") from exc
        return ids

    async def _stream(self, reply: Reply, runs: list[tuple[list[int], list[dict]]],
                      builders: list[ChoiceBuilder], prompt_tokens: int, include_usage: bool,
                      param: str, plan: CachePlan, found: Lookup, ctx: _Ctx) -> StreamingResponse:
        llm = self.llm.options(stream=True)
        streams = [llm.stream_choices.remote(ids, ps, ctx.meta) if len(ps) > 1
                   else llm.stream.remote(ids, ps[0], ctx.meta) for ids, ps in runs]
        n = len(builders) // len(runs)
        try:  # the first deltas decide between an HTTP error and a 200 event stream
            firsts = await asyncio.gather(*[s.__anext__() for s in streams])
        except Exception as exc:
            for s in streams:
                s.cancel()
            raise self._failed(exc, param, ctx) from exc

        async def events() -> AsyncIterator[str]:
            lasts = [{"n_tokens": 0, "cached_tokens": 0, "finish_reason": None}] * len(builders)
            for event in reply.opening(len(builders)):
                yield event
            try:
                async for k, delta in merged(streams, firsts):
                    i = k * n + delta.get("index", 0)
                    lasts[i] = delta
                    for choice in builders[i].deltas(delta):
                        yield reply.chunk(choice)
            except Exception as exc:  # noqa: BLE001 - headers are sent: report it in the stream
                yield sse(stream_error(exc, ctx.meta["request_id"]))
                lasts = [{**last, "finish_reason": "error"} for last in lasts]
            finally:
                for s in streams:
                    s.cancel()  # a disconnected client stops its sequences in the engine
            generated = sum(last["n_tokens"] for last in lasts)
            self.quotas.give_back(ctx.tenant, ctx.max_tokens - generated)
            used = usage(prompt_tokens, generated,
                         min(sum(last["cached_tokens"] for last in lasts), prompt_tokens))
            for event in reply.closing(used if include_usage else None):
                yield event
            if plan.keys is not None and all(last["finish_reason"] in ("stop", "length") for last in lasts):
                self.cache.store_later(plan.keys, found.embedding,
                                       reply.body([b.final() for b in builders], used))

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "x-cache": "miss"})

    @app.get("/v1/load")
    async def load_now(self, request: Request) -> dict:
        """The engine's queue and expected waits as the ingress last saw them (operators)."""
        tenant_for(request.headers.get("authorization"), self.keys)
        # decided: what this replica's Gate admitted and refused, and what Serve's proxy admitted
        if self.load.snapshot is None:  # no view kept here (idle, or Serve's proxy refuses): ask now
            return {"snapshot": await self.llm.load.remote(), "age_s": 0.0, "decided": self.gate.decided}
        return {"snapshot": self.load.snapshot, "age_s": time.monotonic() - self.load.at,
                "decided": self.gate.decided}

    # -- routes ------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self, request: Request) -> ModelList:
        tenant_for(request.headers.get("authorization"), self.keys)
        return ModelList(data=[ModelCard(id=LLM_ID, kind="chat", variant=self.llm_variant),
                               ModelCard(id=EMBEDDER_ID, kind="embedding")])

    @app.post("/v1/chat/completions")
    async def chat_completions(self, req: ChatCompletionRequest, request: Request):
        structure = structure_for(req)
        return await self._generation(
            request, "chat", req, lambda: [self.chat.chat_prompt(chat_messages(req, structure))],
            req.token_budget(), "messages", structure)

    @app.post("/v1/completions")
    async def completions(self, req: CompletionRequest, request: Request):
        return await self._generation(request, "completions", req, req.prompts,
                                      req.max_tokens, "prompt")

    @app.delete("/v1/cache")
    async def invalidate_cache(self, request: Request, model: str | None = None) -> dict:
        """Drop cached responses: all, or one model's (`?model=`)."""
        tenant_for(request.headers.get("authorization"), self.keys)
        if self.cache is None:
            raise APIError(404, "the response cache is disabled in this deployment", None,
                           "cache_disabled", "not_found_error")
        removed = await self.cache.invalidate(model)
        if removed < 0:
            raise APIError(503, "the cache store is unavailable; nothing was invalidated", None,
                           "cache_unavailable", "server_error", headers={"Retry-After": "1"})
        return {"object": "cache.invalidation", "model": model, "removed": removed}

    @app.post("/v1/embeddings")
    async def embeddings(self, req: EmbeddingRequest, request: Request):
        tenant_for(request.headers.get("authorization"), self.keys)
        if req.model != EMBEDDER_ID:
            raise model_not_found(req.model, EMBEDDER_ID)
        texts = req.texts()
        if any(not t for t in texts):
            raise APIError(400, "input strings must not be empty", "input", "invalid_value")
        try:
            vectors, counts = await self.embedder.embed.remote(texts)
        except BackPressureError as exc:
            raise serving_error(exc, "input") from exc
        if req.dimensions is not None and req.dimensions != vectors.shape[1]:
            raise APIError(400, f"{EMBEDDER_ID} has {vectors.shape[1]} dimensions; "
                                f"dimensions={req.dimensions} is not supported", "dimensions")
        data = [{"object": "embedding", "index": i, "embedding": self._encode_vector(v, req)}
                for i, v in enumerate(vectors)]
        tokens = int(sum(counts))
        # JSONResponse directly: FastAPI's encoder walks every float of every vector otherwise.
        return JSONResponse({"object": "list", "data": data, "model": EMBEDDER_ID,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @staticmethod
    def _encode_vector(v: np.ndarray, req: EmbeddingRequest) -> list[float] | str:
        if req.encoding_format == "base64":
            return base64.b64encode(v.astype("<f4").tobytes()).decode()
        return v.tolist()

