"""Early refusals at the ingress: a recent view of the LLM engine's expected wait.

A refusal decided by the engine costs a hop, the LLM replica's event loop (busy streaming
tokens) and, before that, tokenization and the cache lookup here. The ingress polls the engine's
`load()` (a few hundred bytes, every POLL_S while requests flow) and refuses at once a request
whose tenant would already wait longer than `max_queue_wait_s` before its own prompt is even
counted. Only a refusal the engine would also make is made here early: the view may be up to
STALE_S old, so past that it is ignored and the engine decides. Requests sent since the view was
taken count too, each as the engine would count a waiting sequence (its max_tokens of decode
steps, spread over the slots): a burst arriving within one poll is refused here, not one by one
at the engine. With several LLM replicas, each
poll reads one replica (Serve's router picks): the engine stays the authority.

The check runs in `EarlyRefusal`, a plain ASGI middleware in front of FastAPI: a refusal is
decided from the headers alone (key -> tenant, its quota, this view), without FastAPI's routing,
body parsing and validation, which were about half of the ingress' CPU per refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Receive, Scope, Send

from core.llm.engine.admission import retry_after_s

from .errors import APIError, error_response

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")

POLL_S = 0.25
STALE_S = 1.0  # an older view is not trusted to refuse
IDLE_S = 10.0  # stop polling after this long without a request

logger = logging.getLogger("ray.serve")


class IngressMetrics:
    def __init__(self) -> None:
        self.refusals = metrics.Counter("ingress_refusals", description="requests refused, by reason",
                                        tag_keys=("reason",))
        self.refusal_s = metrics.Histogram("ingress_refusal_seconds",
                                           description="time to answer a refusal (429/503/504)",
                                           boundaries=[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2])

    def refused(self, reason: str, seconds: float) -> None:
        self.refusals.inc(tags={"reason": reason})
        self.refusal_s.observe(seconds)


class LoadView:
    def __init__(self, llm: DeploymentHandle, max_queue_wait_s: float | None) -> None:
        self.llm, self.max_wait = llm, max_queue_wait_s
        self.snapshot: dict | None = None
        self.at = 0.0
        self.last_request = 0.0
        self._task: asyncio.Task | None = None
        self.sent_tokens: dict[str, int] = {}  # max_tokens sent per tenant since the snapshot

    def check(self, tenant: str) -> None:
        """Raise 503 now if the engine would refuse this tenant's request anyway."""
        self.last_request = time.monotonic()
        if self.max_wait is None:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll())
        if self.snapshot is None or time.monotonic() - self.at > STALE_S:
            return
        snap = self.snapshot
        waits = snap["expected_wait_s"]
        sent = self.sent_tokens.get(tenant, 0)
        wait = waits.get(tenant, waits["*"]) + sent * snap["full_step_s"] / snap["slots"]
        if wait > self.max_wait:
            retry = str(retry_after_s(wait, self.max_wait))
            raise APIError(503, f"the model is at capacity: expected wait {wait:.1f}s exceeds "
                                f"{self.max_wait:g}s; retry after {retry} s", None, "overloaded",
                           "server_error", headers={"Retry-After": retry})

    def sent(self, tenant: str, max_tokens: int) -> None:
        """A request went on to the engine: it waits there until the next snapshot shows it."""
        self.sent_tokens[tenant] = self.sent_tokens.get(tenant, 0) + max_tokens

    async def _poll(self) -> None:
        while time.monotonic() - self.last_request < IDLE_S:
            with contextlib.suppress(Exception):  # a failed poll leaves the view to go stale
                sent_before = dict(self.sent_tokens)
                snapshot = await self.llm.load.remote()
                # what was sent while the poll was out may be missing from it: keep counting it
                self.sent_tokens = {t: n - sent_before.get(t, 0) for t, n in self.sent_tokens.items()
                                    if n - sent_before.get(t, 0) > 0}
                self.snapshot, self.at = snapshot, time.monotonic()
            await asyncio.sleep(POLL_S)
        self.snapshot = None


class EarlyRefusal:
    """ASGI middleware: a generation request the ingress would refuse (quota: 429, expected
    wait: 503, see `Ingress.admit`) is answered before FastAPI reads its body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith(GENERATION_PATHS):
            authorization = next((v.decode("latin-1") for k, v in scope["headers"]
                                  if k == b"authorization"), None)
            try:  # the Ingress replica this app runs in (how Serve's own routes find it)
                serve.get_replica_context().servable_object.admit(authorization)
            except APIError as exc:
                response = error_response(exc.status, exc.message, exc.param, exc.code, exc.kind,
                                          exc.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
