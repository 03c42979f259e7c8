"""HTTP ingress: OpenAI-compatible routes in front of the cache, LLM and embedder deployments."""

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from core.build.artifacts import EMBEDDER_ID, LLM_ID, build_llm
from core.cache import RequestKeys, is_cacheable, request_keys
from core.cache.near import NearCache
from core.llm.chat_tokenizer import ChatTokenizer, PromptTooLong
from core.llm.engine import Overloaded

from .auth import load_keys, tenant_for
from .errors import APIError, install_error_handlers
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    SamplingFields,
    Usage,
    new_id,
    now,
)

logger = logging.getLogger("ray.serve")
app = FastAPI(title="effserve", description="Efficient LLM and embedding inference on Ray Serve")
install_error_handlers(app)
Endpoint = Literal["chat", "completions"]
CACHE_LOOKUP_TIMEOUT_S = 0.5  # a slow or dead cache never holds a request longer than this


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _usage(prompt_tokens: int, n_tokens: int, cached_tokens: int = 0) -> dict:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=n_tokens,
                 total_tokens=prompt_tokens + n_tokens,
                 prompt_tokens_details={"cached_tokens": cached_tokens}).model_dump()


def _body(endpoint: Endpoint, rid: str, created: int, text: str, finish: str, usage: dict) -> dict:
    if endpoint == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": finish, "logprobs": None}
        return {"id": rid, "object": "chat.completion", "created": created, "model": LLM_ID,
                "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {"id": rid, "object": "text_completion", "created": created, "model": LLM_ID,
            "choices": [choice], "usage": usage}


def _chunk(endpoint: Endpoint, rid: str, created: int, text: str | None, finish: str | None,
           first: bool = False) -> dict:
    if endpoint == "chat":
        delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        kind = "text_completion"
    return {"id": rid, "object": kind, "created": created, "model": LLM_ID, "choices": [choice]}


def _text_of(endpoint: Endpoint, body: dict) -> str:
    choice = body["choices"][0]
    return choice["message"]["content"] if endpoint == "chat" else choice["text"]


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class Ingress:
    def __init__(self, llm: DeploymentHandle, embedder: DeploymentHandle,
                 cache: DeploymentHandle | None, llm_variant: str,
                 api_keys: dict[str, str] | None = None, near_cache_entries: int = 0) -> None:
        self.llm, self.embedder, self.cache, self.llm_variant = llm, embedder, cache, llm_variant
        self.keys = load_keys(api_keys)
        self.chat = ChatTokenizer(build_llm(progress=lambda _: None))
        self._background: set[asyncio.Task] = set()
        self.near = NearCache(near_cache_entries) if cache is not None and near_cache_entries else None
        if self.near is not None:
            self._in_background(self._follow_invalidations())

    async def _follow_invalidations(self) -> None:
        """Clear the near cache whenever the cache replica invalidates (a DELETE that another
        ingress replica received) or restarts; while it cannot be reached, keep it empty."""
        token = None
        while True:
            try:
                new = await self.cache.invalidations.remote(token)
            except Exception as exc:  # noqa: BLE001 - unreachable: serve nothing we cannot revoke
                self.near.clear()
                logger.warning("cache replica unreachable for invalidations (%r); near cache off", exc)
                token = None
                await asyncio.sleep(1.0)
                continue
            if new != token:
                self.near.clear()
                token = new

    # -- helpers -----------------------------------------------------------------------------
    def _check_model(self, requested: str, served: str) -> None:
        if requested != served:
            raise APIError(404, f"model {requested!r} does not exist here; this endpoint serves "
                                f"{served!r} (see GET /v1/models)", "model", "model_not_found",
                           "not_found_error")

    def _tokenize(self, prompt: str, param: str) -> list[int]:
        ids = self.chat.encode(prompt)
        try:
            self.chat.check_fits(ids)
        except PromptTooLong as exc:
            raise APIError(400, str(exc), param, "context_length_exceeded") from exc
        return ids

    @staticmethod
    def _api_error(exc: Exception, param: str) -> Exception:
        """Engine refusals as HTTP errors; anything else stays a server error."""
        if isinstance(exc, Overloaded | BackPressureError):
            return APIError(503, f"the model is at capacity ({exc}); retry shortly", None,
                            "overloaded", "server_error", headers={"Retry-After": "1"})
        if isinstance(exc, RayActorError | ActorUnavailableError):
            return APIError(503, "the model replica failed while serving this request; Serve is "
                                 "restoring it: retry shortly", None, "replica_failed",
                            "server_error", headers={"Retry-After": "2"})
        if isinstance(exc, PromptTooLong):
            return APIError(400, str(exc), param, "context_length_exceeded")
        return exc

    def _in_background(self, coro) -> None:
        task = asyncio.get_event_loop().create_task(coro)
        self._background.add(task)  # keep a reference until done
        task.add_done_callback(self._background.discard)

    # -- response cache ----------------------------------------------------------------------
    def _cache_keys(self, request: Request, endpoint: Endpoint, req: SamplingFields,
                    tenant: str) -> tuple[RequestKeys | None, bool]:
        """(keys, look up?): no-store skips the cache, no-cache skips the lookup but stores."""
        if self.cache is None:
            return None, False
        control = request.headers.get("cache-control", "").lower()
        payload = req.model_dump(exclude_none=True)
        opt_in = request.headers.get("x-cache-opt-in", "").lower() in ("1", "true", "yes")
        if "no-store" in control or not is_cacheable(payload, opt_in, endpoint):
            return None, False
        return request_keys(LLM_ID, endpoint, payload, tenant), "no-cache" not in control

    async def _lookup(self, keys: RequestKeys) -> tuple[dict | None, np.ndarray | None]:
        try:
            return await asyncio.wait_for(self.cache.lookup.remote(keys), CACHE_LOOKUP_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any cache failure: serve uncached
            logger.warning("response cache lookup failed, serving uncached: %r", exc)
            return None, None

    async def _store(self, keys: RequestKeys, embedding: np.ndarray | None, body: dict) -> None:
        try:
            expires_at = await self.cache.put.remote(keys, embedding, body, LLM_ID)
        except Exception as exc:  # noqa: BLE001 - the answer was served; only caching failed
            logger.warning("response cache put failed: %r", exc)
            return
        if expires_at is not None and self.near is not None:
            self.near.put(keys.exact, body, expires_at)

    def _replay(self, endpoint: Endpoint, body: dict, stream: bool, include_usage: bool,
                kind: str):
        """A cached answer in the shape the caller asked for, marked with x-cache."""
        rid, created = new_id("chatcmpl" if endpoint == "chat" else "cmpl"), now()
        body = {**body, "id": rid, "created": created}
        headers = {"x-cache": f"hit-{kind}"}
        if not stream:
            return JSONResponse(body, headers=headers)
        finish = body["choices"][0]["finish_reason"]

        async def events() -> AsyncIterator[str]:
            if endpoint == "chat":
                yield _sse(_chunk(endpoint, rid, created, None, None, first=True))
            yield _sse(_chunk(endpoint, rid, created, _text_of(endpoint, body), None))
            yield _sse(_chunk(endpoint, rid, created, None, finish))
            if include_usage:
                yield _sse({**_chunk(endpoint, rid, created, None, None), "choices": [],
                            "usage": body["usage"]})
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    # -- generation, cached or not -----------------------------------------------------------
    async def _generation(self, request: Request, endpoint: Endpoint, req: SamplingFields,
                          prompt: str, max_tokens: int, param: str):
        tenant = tenant_for(request.headers.get("authorization"), self.keys)
        self._check_model(req.model, LLM_ID)
        prompt_ids = self._tokenize(prompt, param)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        keys, look = self._cache_keys(request, endpoint, req, tenant)
        embedding = None
        if keys is not None and look:
            near = self.near.get(keys.exact) if self.near is not None else None
            if near is not None:
                return self._replay(endpoint, near, req.stream, include_usage, "exact")
            hit, embedding = await self._lookup(keys)
            if hit is not None:
                if hit["kind"] == "exact" and self.near is not None:
                    self.near.put(keys.exact, hit["body"], hit["expires_at"])
                return self._replay(endpoint, hit["body"], req.stream, include_usage, hit["kind"])
        params = {"max_tokens": max_tokens, "temperature": req.temperature, "top_p": req.top_p,
                  "seed": req.seed, "stop": req.stop_list(), "ignore_eos": req.ignore_eos}
        rid, created = new_id("chatcmpl" if endpoint == "chat" else "cmpl"), now()
        if req.stream:
            return await self._stream(endpoint, prompt_ids, params, rid, created, include_usage,
                                      param, keys, embedding)
        try:
            out = await self.llm.generate.remote(prompt_ids, params)
        except Exception as exc:
            raise self._api_error(exc, param) from exc
        body = _body(endpoint, rid, created, out["text"], out["finish_reason"],
                     _usage(len(prompt_ids), out["n_tokens"], out["cached_tokens"]))
        if keys is not None:
            self._in_background(self._store(keys, embedding, body))
        return JSONResponse(body, headers={"x-cache": "miss"})

    async def _stream(self, endpoint: Endpoint, prompt_ids: list[int], params: dict, rid: str,
                      created: int, include_usage: bool, param: str, keys: RequestKeys | None,
                      embedding: np.ndarray | None) -> StreamingResponse:
        deltas = self.llm.options(stream=True).stream.remote(prompt_ids, params)
        try:  # the first delta decides between an HTTP error and a 200 event stream
            first = await deltas.__anext__()
        except Exception as exc:
            raise self._api_error(exc, param) from exc

        async def all_deltas() -> AsyncIterator[dict]:
            yield first
            async for delta in deltas:
                yield delta

        async def events() -> AsyncIterator[str]:
            parts, last = [], first
            if endpoint == "chat":
                yield _sse(_chunk(endpoint, rid, created, None, None, first=True))
            try:
                async for last in all_deltas():
                    parts.append(last["text"])
                    if last["text"] or last["finish_reason"]:
                        yield _sse(_chunk(endpoint, rid, created, last["text"], last["finish_reason"]))
            except Exception as exc:  # noqa: BLE001 - headers are sent: report it in the stream
                yield _sse({"error": {"message": f"generation failed: {exc}", "type": "server_error",
                                      "param": None, "code": "internal_error"}})
                last = {**last, "finish_reason": "error"}
            finally:
                deltas.cancel()  # a disconnected client stops its sequence in the engine
            usage = _usage(len(prompt_ids), last["n_tokens"], last["cached_tokens"])
            if include_usage:
                yield _sse({**_chunk(endpoint, rid, created, None, None), "choices": [], "usage": usage})
            yield _sse("[DONE]")
            if keys is not None and last["finish_reason"] in ("stop", "length"):
                body = _body(endpoint, rid, created, "".join(parts), last["finish_reason"], usage)
                self._in_background(self._store(keys, embedding, body))

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "x-cache": "miss"})

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
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        return await self._generation(request, "chat", req, self.chat.chat_prompt(messages),
                                      req.token_budget(), "messages")

    @app.post("/v1/completions")
    async def completions(self, req: CompletionRequest, request: Request):
        return await self._generation(request, "completions", req, req.prompt_text(),
                                      req.max_tokens, "prompt")

    @app.delete("/v1/cache")
    async def invalidate_cache(self, request: Request, model: str | None = None) -> dict:
        """Drop cached responses: all, or one model's (`?model=`)."""
        tenant_for(request.headers.get("authorization"), self.keys)
        if self.cache is None:
            raise APIError(404, "the response cache is disabled in this deployment", None,
                           "cache_disabled", "not_found_error")
        if self.near is not None:
            self.near.clear()  # this replica's at once; the others hear it from the cache replica
        removed = await self.cache.invalidate.remote(model)
        if removed < 0:
            raise APIError(503, "the cache store is unavailable; nothing was invalidated", None,
                           "cache_unavailable", "server_error", headers={"Retry-After": "1"})
        return {"object": "cache.invalidation", "model": model, "removed": removed}

    @app.post("/v1/embeddings")
    async def embeddings(self, req: EmbeddingRequest, request: Request):
        tenant_for(request.headers.get("authorization"), self.keys)
        self._check_model(req.model, EMBEDDER_ID)
        texts = req.texts()
        if any(not t for t in texts):
            raise APIError(400, "input strings must not be empty", "input", "invalid_value")
        try:
            vectors, counts = await self.embedder.embed.remote(texts)
        except BackPressureError as exc:
            raise self._api_error(exc, "input") from exc
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
