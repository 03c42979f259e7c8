"""HTTP ingress: OpenAI-compatible routes in front of the LLM and embedder deployments."""


import base64
import json
from collections.abc import AsyncIterator

import numpy as np
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from core.build.artifacts import EMBEDDER_ID, LLM_ID, build_llm
from core.llm.chat_tokenizer import ChatTokenizer, PromptTooLong
from core.llm.engine import Overloaded

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

app = FastAPI(title="effserve", description="Efficient LLM and embedding inference on Ray Serve")
install_error_handlers(app)


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class Ingress:
    def __init__(self, llm: DeploymentHandle, embedder: DeploymentHandle, llm_variant: str) -> None:
        self.llm, self.embedder, self.llm_variant = llm, embedder, llm_variant
        self.chat = ChatTokenizer(build_llm(progress=lambda _: None))

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
    def _params(req: SamplingFields, max_tokens: int) -> dict:
        return {"max_tokens": max_tokens, "temperature": req.temperature, "top_p": req.top_p,
                "seed": req.seed, "stop": req.stop_list()}

    @staticmethod
    def _api_error(exc: Exception, param: str) -> Exception:
        """Engine refusals as HTTP errors; anything else stays a server error."""
        if isinstance(exc, Overloaded | BackPressureError):
            return APIError(503, f"the model is at capacity ({exc}); retry shortly", None,
                            "overloaded", "server_error", headers={"Retry-After": "1"})
        if isinstance(exc, PromptTooLong):
            return APIError(400, str(exc), param, "context_length_exceeded")
        return exc

    async def _generate(self, prompt_ids: list[int], params: dict, param: str) -> dict:
        try:
            return await self.llm.generate.remote(prompt_ids, params)
        except Exception as exc:
            raise self._api_error(exc, param) from exc

    # -- routes ------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=LLM_ID, kind="chat", variant=self.llm_variant),
                               ModelCard(id=EMBEDDER_ID, kind="embedding")])

    @app.post("/v1/chat/completions")
    async def chat_completions(self, req: ChatCompletionRequest):
        self._check_model(req.model, LLM_ID)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        prompt_ids = self._tokenize(self.chat.chat_prompt(messages), "messages")
        params = self._params(req, req.token_budget())
        rid, created = new_id("chatcmpl"), now()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await self._stream(prompt_ids, params, rid, created, "chat.completion.chunk",
                                      include_usage, "messages")
        out = await self._generate(prompt_ids, params, "messages")
        return {
            "id": rid, "object": "chat.completion", "created": created, "model": LLM_ID,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]},
                         "finish_reason": out["finish_reason"], "logprobs": None}],
            "usage": self._usage(prompt_ids, out["n_tokens"], out["cached_tokens"]),
        }

    @app.post("/v1/completions")
    async def completions(self, req: CompletionRequest):
        self._check_model(req.model, LLM_ID)
        prompt_ids = self._tokenize(req.prompt_text(), "prompt")
        params = self._params(req, req.max_tokens)
        rid, created = new_id("cmpl"), now()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await self._stream(prompt_ids, params, rid, created, "text_completion",
                                      include_usage, "prompt")
        out = await self._generate(prompt_ids, params, "prompt")
        return {
            "id": rid, "object": "text_completion", "created": created, "model": LLM_ID,
            "choices": [{"index": 0, "text": out["text"], "finish_reason": out["finish_reason"],
                         "logprobs": None}],
            "usage": self._usage(prompt_ids, out["n_tokens"], out["cached_tokens"]),
        }

    @app.post("/v1/embeddings")
    async def embeddings(self, req: EmbeddingRequest):
        self._check_model(req.model, EMBEDDER_ID)
        texts = req.texts()
        if any(not t for t in texts):
            raise APIError(400, "input strings must not be empty", "input", "invalid_value")
        vectors, counts = await self.embedder.embed.remote(texts)
        if req.dimensions is not None and req.dimensions != vectors.shape[1]:
            raise APIError(400, f"{EMBEDDER_ID} has {vectors.shape[1]} dimensions; "
                                f"dimensions={req.dimensions} is not supported", "dimensions")
        data = [{"object": "embedding", "index": i, "embedding": self._encode_vector(v, req)}
                for i, v in enumerate(vectors)]
        tokens = int(sum(counts))
        return {"object": "list", "data": data, "model": EMBEDDER_ID,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    # -- response shaping --------------------------------------------------------------------
    @staticmethod
    def _encode_vector(v: np.ndarray, req: EmbeddingRequest) -> list[float] | str:
        if req.encoding_format == "base64":
            return base64.b64encode(v.astype("<f4").tobytes()).decode()
        return v.tolist()

    @staticmethod
    def _usage(prompt_ids: list[int], n_tokens: int, cached_tokens: int = 0) -> dict:
        return Usage(prompt_tokens=len(prompt_ids), completion_tokens=n_tokens,
                     total_tokens=len(prompt_ids) + n_tokens,
                     prompt_tokens_details={"cached_tokens": cached_tokens}).model_dump()

    async def _stream(self, prompt_ids: list[int], params: dict, rid: str, created: int, kind: str,
                      include_usage: bool, param: str) -> StreamingResponse:
        chat = kind == "chat.completion.chunk"

        def chunk(text: str | None, finish: str | None, first: bool = False) -> dict:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else (
                    {"content": text} if text else {})
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return {"id": rid, "object": kind, "created": created, "model": LLM_ID,
                    "choices": [choice]}

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
            n_tokens = cached = 0
            if chat:
                yield _sse(chunk(None, None, first=True))
            try:
                async for delta in all_deltas():
                    n_tokens, cached = delta["n_tokens"], delta["cached_tokens"]
                    if delta["text"] or delta["finish_reason"]:
                        yield _sse(chunk(delta["text"], delta["finish_reason"]))
            except Exception as exc:  # noqa: BLE001 - headers are sent: report it in the stream
                yield _sse({"error": {"message": f"generation failed: {exc}", "type": "server_error",
                                      "param": None, "code": "internal_error"}})
            finally:
                deltas.cancel()  # a disconnected client stops its sequence in the engine
            if include_usage:
                yield _sse({"id": rid, "object": kind, "created": created, "model": LLM_ID,
                            "choices": [], "usage": self._usage(prompt_ids, n_tokens, cached)})
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})


