"""Response-cache hits answered in Serve's HTTP proxy, before the hop to the Ingress.

Measured over HTTP at 100k entries (bench/results/response_cache.md): of an exact hit's ~12 ms,
~8.5 went to the proxy -> Ingress hop (the handle call, the replica fetching the body back from
the proxy, the response's way back) and ~0.8 ms to the Ingress' own work. So for the apps the
proxy gates (proxy_refusal.py) it looks the request up itself, with the Ingress' own cache client
(ResponseCacheClient: a near cache of exact hits, then the cache replica) and answers a hit as the
Ingress would (`cached_response`: the same body, x-cache and x-request-id headers).

Only what the Ingress would serve from the cache the same way is looked up here: a JSON body
that validates, for the served model, whose prompts fit, from a valid key whose tenant has no
tokens quota (a hit spends prompt tokens there), with a valid x-request-timeout, Cache-Control
neither no-cache nor no-store, and no tools or response_format. Anything else, and anything that
fails here, goes on to the Ingress untouched, which answers it (errors included) as always.

A miss goes on with its lookup's result in the ASGI scope (LOOKED_UP: the key looked up and the
prompt's embedding), so the Ingress does not look it up again and stores the answer under that
embedding. The body goes along in the scope too (BODY): Serve's replica would otherwise fetch it
back from the proxy, one more round trip. Clients cannot set scope entries: only headers.
A hit answered here is not in Serve's access log or request metrics, nor in the Ingress'
`decided` counts; the cache replica counts it among its lookups.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Scope

from core.build.artifacts import LLM_ID
from core.llm.chat_tokenizer import ChatTokenizer

from .auth import tenant_for
from .errors import APIError
from .openai_format import Endpoint
from .quotas import Quotas
from .response_cache import CachePlan, ResponseCacheClient, cached_response
from .schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from .structured import Structure, chat_messages

logger = logging.getLogger("ray.serve")
BODY = "effserve.body"  # scope: the request body as the proxy read it
LOOKED_UP = "effserve.looked_up"  # scope: the proxy's lookup missed: {"exact": key, "embedding": ...}
MAX_SCOPE_BODY = 1 << 20  # larger bodies are fetched by the replica as Serve does
ENDPOINTS: dict[str, Endpoint] = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


def request_timeout(headers: Mapping[str, str]) -> float | None:
    """`x-request-timeout: <seconds>`: the request ends (504 / an SSE error) when it passes."""
    raw = headers.get("x-request-timeout")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600 or seconds != seconds:
        raise APIError(400, "x-request-timeout must be a number of seconds in (0, 3600]",
                       "x-request-timeout", "invalid_value")
    return seconds


class CacheFront:
    def __init__(self, cache: ResponseCacheClient, keys: dict[str, str], quotas: Quotas,
                 chat: ChatTokenizer) -> None:
        self.cache, self.keys, self.quotas, self.chat = cache, keys, quotas, chat

    async def answer(self, scope: Scope, body: bytes, path: str) -> ASGIApp | None:
        """The cached answer to this generation request, or None: the Ingress answers it."""
        try:
            looked = self._cacheable(scope, body, path)
        except Exception:  # noqa: BLE001 - invalid in any way: the Ingress answers it, as always
            return None
        if looked is None:
            return None
        endpoint, req, plan = looked
        assert plan.keys is not None
        found = await self.cache.lookup(plan.keys)
        if found.body is None:
            scope[LOOKED_UP] = {"exact": plan.keys.exact, "embedding": found.embedding}
            return None
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return cached_response(endpoint, found, req.stream, include_usage)

    def _cacheable(self, scope: Scope, body: bytes,
                   path: str) -> tuple[Endpoint, SamplingFields, CachePlan] | None:
        """What the Ingress would look up for this request, checked as it checks before its
        lookup (raises, or None, where it would answer otherwise)."""
        headers = Headers(scope=scope)
        if not headers.get("content-type", "").lower().startswith("application/json"):
            return None  # FastAPI's own reading of other types is the Ingress' to do
        tenant = tenant_for(headers.get("authorization"), self.keys)
        if self.quotas.counts_tokens(tenant):
            return None
        request_timeout(headers)
        endpoint = ENDPOINTS[path]
        if endpoint == "chat":
            chat = ChatCompletionRequest.model_validate(json.loads(body))
            if chat.tools or chat.response_format is not None:
                return None  # a grammar to compile: the Ingress' work
            req: SamplingFields = chat
            prompts = [self.chat.chat_prompt(chat_messages(chat, Structure()))]
        else:
            completion = CompletionRequest.model_validate(json.loads(body))
            req, prompts = completion, completion.prompts()
        if req.model != LLM_ID:
            return None
        for prompt in prompts:
            self.chat.check_fits(self.chat.encode(prompt))
        plan = self.cache.plan(headers, endpoint, req, tenant)
        return (endpoint, req, plan) if plan.look_up else None

    def close(self) -> None:
        self.cache.close()

