"""Cache keys: when are two requests "the same request"?

Exact key: sha256 over canonical JSON of the model, the endpoint kind, the
tenant, the normalised prompt/messages and every parameter that can change
the answer. Semantic partition: the same minus the user's prompt, so a
semantic match can only ever return an answer produced by the same model,
for the same tenant, with the same sampling parameters and system prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

EndpointKind = Literal["chat", "completions", "embeddings"]

KEY_VERSION = 1  # bump when normalisation changes, so old entries stop matching

# Where each endpoint carries its prompt.
PROMPT_FIELD: dict[str, str] = {"chat": "messages", "completions": "prompt", "embeddings": "input"}

# Fields that never change the response body: transport and bookkeeping.
# Everything else is part of the key, so an unknown new parameter can only
# lower the hit rate, never return an answer computed with other settings.
IGNORED_FIELDS: frozenset[str] = frozenset(
    {"model", "stream", "stream_options", "user", "metadata", "store", "service_tier", "cache"}
)

_WS = re.compile(r"\s+")
_FENCE = re.compile(r"(```.*?```)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class RequestKeys:
    """Everything the cache needs to know about one request."""

    exact: str  # hex sha256, the id of the entry
    partition: str  # chromadb collection name for its semantic neighbours
    semantic_text: str | None  # prompt to embed and guard; None: exact-only


def normalize_text(text: str) -> str:
    """Strip and collapse whitespace runs, but keep fenced code verbatim.

    Whitespace inside ``` blocks is meaning (Python indentation), elsewhere it
    is noise that should not split the cache.
    """
    parts = _FENCE.split(text)
    out = [p if p.startswith("```") else _WS.sub(" ", p) for p in parts]
    return "".join(out).strip()


def _normalize_content(content: Any) -> Any:
    if isinstance(content, str):
        return normalize_text(content)
    if isinstance(content, list):  # OpenAI content parts
        return [
            {**part, "text": normalize_text(part["text"])}
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
    return content


def normalize_prompt(endpoint: EndpointKind, payload: Mapping[str, Any]) -> Any:
    """The prompt part of a request, normalised (messages, prompt or input)."""
    value = payload.get(PROMPT_FIELD[endpoint])
    if endpoint == "chat":
        return [
            {**m, "content": _normalize_content(m.get("content"))} if isinstance(m, Mapping) else m
            for m in (value or [])
        ]
    if isinstance(value, list):
        return [normalize_text(v) if isinstance(v, str) else v for v in value]
    return normalize_text(value) if isinstance(value, str) else value


def _canonical_value(value: Any) -> Any:
    """0 and 0.0 must hash alike; None means "not given"."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _canonical_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_canonical_value(v) for v in value]
    return value


def answer_params(endpoint: EndpointKind, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Every request field that can change the answer, canonicalised."""
    skip = IGNORED_FIELDS | {PROMPT_FIELD[endpoint]}
    params = {k: _canonical_value(v) for k, v in payload.items() if k not in skip and v is not None}
    stop = params.get("stop")
    if isinstance(stop, str):
        params["stop"] = [stop]
    if isinstance(params.get("stop"), list):
        params["stop"] = sorted(set(params["stop"]), key=str)  # a set of stop strings
    return params


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _sha256(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def exact_key(model: str, endpoint: EndpointKind, payload: Mapping[str, Any], tenant: str) -> str:
    """Hex sha256 identifying the exact request (model, prompt, params, tenant)."""
    return _sha256(
        {
            "v": KEY_VERSION,
            "model": model,
            "endpoint": endpoint,
            "tenant": tenant,
            "prompt": normalize_prompt(endpoint, payload),
            "params": answer_params(endpoint, payload),
        }
    )


def _split_chat(payload: Mapping[str, Any]) -> tuple[list[Any], str | None]:
    """(context messages, the single user question) or (all, None) if not single-turn."""
    messages = list(payload.get("messages") or [])
    if not messages or not isinstance(messages[-1], Mapping) or messages[-1].get("role") != "user":
        return messages, None
    context = messages[:-1]
    # history changes the answer in ways a similarity on the last turn cannot see
    if any(not isinstance(m, Mapping) or m.get("role") not in ("system", "developer") for m in context):
        return messages, None
    content = messages[-1].get("content")
    if isinstance(content, list):
        if not all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
            return messages, None  # images etc.: exact only
        content = " ".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
        return messages, None
    return context, normalize_text(content)


def semantic_text(endpoint: EndpointKind, payload: Mapping[str, Any]) -> str | None:
    """The text to match semantically, or None when only an exact hit is safe.

    Semantic matching is offered for single-turn chat (system prompts allowed,
    they go into the partition) and single-string completions. Never for
    embeddings: a neighbour's vector is simply the wrong vector.
    """
    if endpoint == "chat":
        text = _split_chat(payload)[1]
    elif endpoint == "completions":
        prompt = payload.get("prompt")
        text = normalize_text(prompt) if isinstance(prompt, str) else None
    else:
        text = None
    return text or None


def params_fingerprint(endpoint: EndpointKind, payload: Mapping[str, Any]) -> str:
    """Hash of what, besides the user's prompt, decides the answer.

    Includes the endpoint kind, the answer-changing parameters and, for chat,
    the system messages: the same question under another system prompt is
    another question.
    """
    context: Any = None
    if endpoint == "chat":
        messages, question = _split_chat(payload)
        context = normalize_prompt("chat", {"messages": messages}) if question else None
    return _sha256({"endpoint": endpoint, "params": answer_params(endpoint, payload), "context": context})[
        :32
    ]


_SLUG = re.compile(r"[^a-zA-Z0-9]+")


def _slug(text: str, limit: int) -> str:
    return _SLUG.sub("_", text).strip("_")[:limit].strip("_")


def partition_name(model: str, params_fp: str, tenant: str) -> str:
    """A valid chromadb collection name unique to (model, params, tenant).

    Readable prefix for operators, hash for uniqueness: slugs may collide
    ("a/b" and "a_b"), the hash never does in practice. No dots: the store
    derives its exact-only collection as ``<partition>.x``. At most 61 chars.
    """
    digest = hashlib.sha256(canonical_json([model, params_fp, tenant]).encode()).hexdigest()[:20]
    name = f"p-{_slug(model, 24) or 'm'}-{_slug(tenant, 12) or 't'}-{digest}"
    return name


def is_cacheable(params: Mapping[str, Any], opt_in: bool = False, endpoint: EndpointKind = "chat") -> bool:
    """Is the answer reproducible, so a cached one is as good as a fresh one?

    Embeddings are deterministic. Generation is, with temperature 0 or a seed
    (an absent temperature means the OpenAI default of 1). Otherwise only
    callers that opt in (they accept a previously sampled answer) are cached.
    """
    if opt_in or endpoint == "embeddings":
        return True
    if params.get("seed") is not None:
        return True
    temperature = params.get("temperature")
    return temperature is not None and float(temperature) == 0.0


def request_keys(model: str, endpoint: EndpointKind, payload: Mapping[str, Any], tenant: str) -> RequestKeys:
    """All keys for one request: exact key, partition and the text to embed."""
    return RequestKeys(
        exact=exact_key(model, endpoint, payload, tenant),
        partition=partition_name(model, params_fingerprint(endpoint, payload), tenant),
        semantic_text=semantic_text(endpoint, payload),
    )
