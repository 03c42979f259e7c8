"""The early refusal in Serve's HTTP proxy: a refused generation request never costs the
proxy -> Ingress hop (the proxy's handle call, the Ingress replica's ASGI work): a 429 storm cost
0.31 ms of server CPU per refusal instead of 5.76 ms (bench/results/refusal_cost_proxy.md).

Turned on by Serve's proxy callback, set where Ray starts (the proxy is a Ray actor and reads it
from its environment; `make serve` sets it):
    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.proxy_refusal:middlewares
The decision is the Ingress' own (gate.py, early_refusal.py), with the app's settings read
through Serve (proxy_gates.py). Only the generation endpoints of this project's apps are gated;
anything else passes untouched. Without the variable the Ingress refuses, as it always did.

Marking: a request the proxy admitted goes on with ADMITTED_HEADER = the app's secret, so the
Ingress does not count it again; whatever a client sent under that name is dropped first, for
every request. Its reservation in the proxy's load view counts until a poll sees it in the
engine, or until its answer shows it never got there (not a 200, or a cache hit).
A refusal here gets the `x-request-id` Serve would give it (the client's, or a new one), but
is not in Serve's proxy access log or request metrics (it never reaches that part of the proxy);
it is counted in `ray_ingress_refusals{reason}` as before.

An admitted request is then looked up in the response cache here (cache_front.py): a hit is
answered without the hop; a miss goes on with its lookup and its body in the ASGI scope.
DELETE /v1/cache passing through empties this proxy's near cache of the app at once.
"""

from __future__ import annotations

import uuid

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .cache_front import BODY, MAX_SCOPE_BODY
from .early_refusal import admit_sized, generation_path, header, read_body, refusal
from .errors import APIError
from .gate import ADMITTED_HEADER
from .proxy_gates import ProxyGates

REQUEST_ID = b"x-request-id"
CACHE_PATH = "/v1/cache"
# Serve reads the proxy callback from this variable; benchmarks and tests set it as `make serve` does
CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = f"{__name__}:middlewares"


def middlewares() -> list[Middleware]:
    """Serve's HTTP proxy callback (called once, when the proxy starts)."""
    return [Middleware(ProxyRefusal)]


class ProxyRefusal:
    def __init__(self, app: ASGIApp) -> None:
        self.app, self.gates = app, ProxyGates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # never a client's word: only this proxy says a request was admitted
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != ADMITTED_HEADER]
        path = generation_path(scope)
        gate = await self.gates.for_route(scope["path"][:-len(path)] or "/") if path else None
        if gate is None:
            if scope["method"] == "DELETE" and scope["path"].endswith(CACHE_PATH):
                await self._invalidation(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        request_id = header(scope, REQUEST_ID)
        if request_id is None:  # Serve's RequestIdMiddleware (inside this one) keeps it
            request_id = f"req-{uuid.uuid4().hex[:20]}".encode()
            scope["headers"].append((REQUEST_ID, request_id))
        try:
            rid, body, receive = await admit_sized(gate, scope, receive, path)
        except APIError as exc:
            exc.headers = {**(exc.headers or {}), "x-request-id": request_id.decode("latin-1")}
            await refusal(exc)(scope, receive, send)
            return
        if body is None:
            body, receive = await read_body(receive)
        cached = await gate.front.answer(scope, body, path) if gate.front is not None else None
        if cached is not None:  # never reaches the Ingress, nor the engine
            gate.load.drop(rid)
            cached.headers["x-request-id"] = request_id.decode("latin-1")
            await cached(scope, receive, send)
            return
        if len(body) <= MAX_SCOPE_BODY:
            scope[BODY] = body
        scope["headers"].append((ADMITTED_HEADER, gate.secret.encode()))
        gate.load.forwarded(rid)
        reached_engine = False

        async def watch(message: Message) -> None:
            nonlocal reached_engine
            if message["type"] == "http.response.start":
                cache = dict(message.get("headers", ())).get(b"x-cache", b"")
                reached_engine = message["status"] == 200 and not cache.startswith(b"hit")
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if not reached_engine:
                gate.load.drop(rid)

    async def _invalidation(self, scope: Scope, receive: Receive, send: Send) -> None:
        """DELETE /v1/cache: the app's near cache here is emptied now and again when the answer
        starts (what a lookup fetched meanwhile); the long poll would hear of it a little later."""
        gate = self.gates.by_route.get(scope["path"][:-len(CACHE_PATH)] or "/")
        front = gate.front if gate is not None else None
        if front is None:
            await self.app(scope, receive, send)
            return
        front.cache.clear_near()

        async def cleared(message: Message) -> None:
            if message["type"] == "http.response.start":
                front.cache.clear_near()
            await send(message)

        await self.app(scope, receive, cleared)
