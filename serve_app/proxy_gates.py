"""The Gates Serve's HTTP proxy refuses with: one per app whose ingress is this project's
Ingress, found in the controller's route table (route prefix -> app) and built from that
Ingress' `refusal_settings()` (keys, quotas, max_queue_wait_s, the admitted-marker secret, the
LLM's handle for the load view): the app's own config, read through Serve, never copied.

Read lazily: the first generation request waits for the first read (a few ms); after that the
table is re-read in the background at most every REFRESH_S while requests come, and at once
(awaited, at most every MISS_REFRESH_S) for a route it does not know, so an app deployed after
the proxy started is gated from its first requests. A Gate is kept across reads while its app's
secret is unchanged (its quota buckets and reservations live on); a new secret means the app
was redeployed: a new Gate. An app whose settings cannot be read is not gated here: its
Ingress refuses as it does without the proxy. A new Gate's cache front (cache_front.py: the
cache's handle and the 1.5 MB chat tokenizer, `cache_front_settings()`) is attached in the
background: refusals never wait for it, and until it is there the Ingress answers cache hits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import ray
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve.handle import DeploymentHandle

from .cache_front import CacheFront
from .gate import Gate
from .overload import IngressMetrics, LoadView
from .quotas import QuotaArgs, Quotas
from .response_cache import ResponseCacheClient

INGRESS = "Ingress"  # the deployment name of serve_app.ingress.Ingress
REFRESH_S = 5.0
MISS_REFRESH_S = 1.0
READ_TIMEOUT_S = 2.0

logger = logging.getLogger("ray.serve")


class ProxyGates:
    def __init__(self) -> None:
        self.by_route: dict[str, Gate] = {}
        self._routes: set[str] = set()  # every route of an Ingress, gated here or not
        self._by_app: dict[str, Gate] = {}
        self._read_at = -float("inf")
        self._reading: asyncio.Task | None = None
        self._metrics: IngressMetrics | None = None
        self._controller = None
        # id(gate) -> the task attaching its cache front; True when it read the settings (the
        # front may still be None: the app has no cache), False when that read failed
        self._fronts: dict[int, asyncio.Task[bool]] = {}

    async def for_route(self, route_prefix: str) -> Gate | None:
        """The Gate of the app served at this route prefix, or None (not this project's app)."""
        age = time.monotonic() - self._read_at
        reading = self._reading is not None and not self._reading.done()
        if route_prefix not in self._routes and (age > MISS_REFRESH_S or reading):
            await asyncio.shield(self._read())  # a cold burst waits for the first read, all of it
        elif age > REFRESH_S:
            self._read()
        return self.by_route.get(route_prefix)

    def _read(self) -> asyncio.Task:
        if self._reading is None or self._reading.done():
            self._read_at = time.monotonic()
            self._reading = asyncio.get_running_loop().create_task(self._read_all())
        return self._reading

    async def _read_all(self) -> None:
        with contextlib.suppress(Exception):  # no controller (shutting down): keep what we have
            if self._controller is None:
                self._controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
            endpoints = await self._controller.get_all_endpoints.remote()
            apps = {info["route"]: dep.app_name for dep, info in endpoints.items()
                    if dep.name == INGRESS and info.get("route")}
            gates = await asyncio.gather(*(self._gate(app) for app in apps.values()))
            kept = {id(gate) for gate in gates}
            for old in self._by_app.values():  # redeployed or gone: stop its cache client
                if id(old) not in kept:
                    self._fronts.pop(id(old), None)
                    if old.front is not None:
                        old.front.close()
            self._by_app = {app: gate for app, gate in zip(apps.values(), gates, strict=True) if gate}
            self.by_route = {route: self._by_app[app] for route, app in apps.items() if app in self._by_app}
            self._routes = set(apps)

    async def _gate(self, app: str) -> Gate | None:
        kept = self._by_app.get(app)
        try:
            ingress = DeploymentHandle(INGRESS, app)
            settings = await asyncio.wait_for(ingress.refusal_settings.remote(), READ_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - deploying, or not this project's Ingress
            logger.info("proxy refusal: app %r not gated here (%s)", app, type(exc).__name__)
            return None
        if not settings["proxy_refusal"]:
            return None  # the app's Ingress refuses (its config says so)
        if kept is not None and kept.secret == settings["secret"]:
            attaching = self._fronts.get(id(kept))
            if attaching is None or (attaching.done() and not attaching.result()):  # it failed
                self._attach(kept, ingress)
            return kept
        if self._metrics is None:
            self._metrics = IngressMetrics()
        quotas = Quotas({t: QuotaArgs(**q) for t, q in settings["quotas"].items()})
        gate = Gate(settings["keys"], quotas, LoadView(settings["llm"], settings["max_queue_wait_s"]),
                    self._metrics, settings["secret"])
        # The cache front (a 1.5 MB tokenizer to load) joins later: refusals must not wait for it;
        # until then the Ingress answers cache hits, as without the proxy.
        self._attach(gate, ingress)
        return gate

    def _attach(self, gate: Gate, ingress: DeploymentHandle) -> None:
        self._fronts[id(gate)] = asyncio.get_running_loop().create_task(self._attach_front(gate, ingress))

    async def _attach_front(self, gate: Gate, ingress: DeploymentHandle) -> bool:
        try:
            settings = await ingress.cache_front_settings.remote()
        except Exception as exc:  # noqa: BLE001 - redeployed meanwhile: the next read retries
            logger.info("proxy cache front: not attached (%s)", type(exc).__name__)
            return False
        if settings["cache"] is not None:
            client = ResponseCacheClient(settings["cache"], settings["near_cache_entries"])
            gate.front = CacheFront(client, gate.keys, gate.quotas, settings["chat"])
        return True
