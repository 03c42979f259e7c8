"""The early refusal as ASGI middleware: a generation request its Gate refuses (quota: 429,
expected wait: 503) is answered before its body is read (in Serve, reading it is one more
message from the proxy) and before FastAPI routes and validates it. An admitted request's body
is read here (bytes, a plain json.loads for max_tokens and n) to size its reservation, and handed
on unchanged.

`EarlyRefusal` runs in the Ingress replica, in front of FastAPI; proxy_refusal.py puts the same
steps (`generation_path`, `refusal`, `admit_sized`) in Serve's HTTP proxy.
"""

from __future__ import annotations

import json

from ray import serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .cache_front import BODY
from .errors import APIError, error_response
from .gate import ADMITTED_HEADER, Gate
from .schemas import CHAT_MAX_TOKENS, COMPLETION_MAX_TOKENS, MAX_CHOICES, MAX_TOKENS_LIMIT

DEFAULT_MAX_TOKENS = {"/v1/chat/completions": CHAT_MAX_TOKENS, "/v1/completions": COMPLETION_MAX_TOKENS}


def generation_path(scope: Scope) -> str | None:
    """The generation endpoint a POST asks for ("/v1/chat/completions", ...), or None: only
    these are refused early. What comes before it in the path is the app's route prefix."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    return next((p for p in DEFAULT_MAX_TOKENS if scope["path"].endswith(p)), None)


def header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope["headers"] if k == name), None)


def authorization(scope: Scope) -> str | None:
    value = header(scope, b"authorization")
    return value and value.decode("latin-1")


def refusal(exc: APIError) -> ASGIApp:
    return error_response(exc.status, exc.message, exc.param, exc.code, exc.kind, exc.headers)


async def admit_sized(gate: Gate, scope: Scope, receive: Receive,
                      path: str) -> tuple[int | None, bytes | None, Receive]:
    """The gate's decision from the headers (APIError: refused); if admitted and counted, the
    reservation resized from the body, which comes back too (None: not read), and a `receive`
    that hands the body on."""
    rid = await gate.admit(authorization(scope), DEFAULT_MAX_TOKENS[path])
    body = None
    if rid is not None:  # the refusal needed no body (its size does not change its wait); this does
        body, receive = await read_body(receive)
        gate.load.resize(rid, _decode_budget(body, DEFAULT_MAX_TOKENS[path]))
    return rid, body, receive


class EarlyRefusal:
    """In the Ingress replica, outermost: the reservation id goes to the route in
    scope["state"]. A request Serve's proxy admitted (this app's secret in ADMITTED_HEADER) is
    not counted again; only its tokens quota is checked here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = generation_path(scope)
        if path is None:
            await self.app(scope, receive, send)
            return
        gate: Gate = serve.get_replica_context().servable_object.gate  # how Serve's routes find it
        rid = None
        body = scope.pop(BODY, None)
        if body is not None:  # Serve's proxy sent it along: no round trip to the proxy for it
            receive = _replay(body, receive, skip_body=True)
        try:
            if gate.trusts(header(scope, ADMITTED_HEADER)):
                gate.admit_admitted(authorization(scope))
            else:
                rid, _, receive = await admit_sized(gate, scope, receive, path)
        except APIError as exc:
            await refusal(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["reservation"] = rid
        try:
            await self.app(scope, receive, send)
        finally:  # refused by validation, a cache hit, an error: it never reached the engine
            gate.load.release_unsent(rid)


async def read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole body, and a `receive` that hands it on."""
    body = await _read_body(receive)
    return body, _replay(body, receive)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive, skip_body: bool = False) -> Receive:
    """The body once more for the app, then whatever the connection says next (a disconnect).
    skip_body: `receive` still delivers the body (the replica fetches it from the proxy anyway):
    not twice."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        message = await receive()
        while skip_body and message["type"] == "http.request":
            message = await receive()
        return message

    return replay


def _decode_budget(body: bytes, default_max_tokens: int) -> int:
    """max_tokens x n as the body asks (validation comes later, in the route): what the request
    may cost the engine in decode steps."""
    try:
        fields = json.loads(body)
        max_tokens = fields.get("max_completion_tokens") or fields.get("max_tokens") or default_max_tokens
        n = fields.get("n") or 1
        if not (1 <= int(max_tokens) <= MAX_TOKENS_LIMIT and 1 <= int(n) <= MAX_CHOICES):
            return default_max_tokens  # out of range: the route answers 400
        prompts = fields.get("prompt")
        copies = len(prompts) if isinstance(prompts, list) and prompts and isinstance(prompts[0], str) else 1
        copies = copies if copies <= MAX_CHOICES else 1  # too many: the route answers 400
        return int(max_tokens) * int(n) * copies
    except (ValueError, TypeError, AttributeError):
        return default_max_tokens  # the route answers 400
