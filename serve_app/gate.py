"""Who may start a generation, decided from the request's headers alone: the API key's tenant,
its quota (429), then the engine's expected wait for that tenant (503).

One decision, two places to make it: each Ingress replica holds a Gate (early_refusal.py, in
front of FastAPI), and with RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH set Serve's HTTP proxy
holds one per app, built from the Ingress' `refusal_settings()` (proxy_refusal.py): a request
refused there never costs the proxy -> ingress hop. A request the proxy admitted carries
ADMITTED_HEADER with the app's secret (the proxy strips whatever a client sent under that
name); an Ingress that sees its own secret there does not count the request again: only the
tokens quota stays with it, since only it tokenizes and spends tokens.
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING

from .auth import tenant_for
from .errors import APIError
from .overload import IngressMetrics, LoadView
from .quotas import Quotas

if TYPE_CHECKING:
    from .cache_front import CacheFront

ADMITTED_HEADER = b"x-effserve-admitted"


class Gate:
    def __init__(self, keys: dict[str, str], quotas: Quotas, load: LoadView,
                 metrics: IngressMetrics, secret: str, front: CacheFront | None = None) -> None:
        self.keys, self.quotas, self.load, self.metrics = keys, quotas, load, metrics
        self.secret = secret
        self.front = front  # in Serve's proxy: cache hits answered there (cache_front.py)
        self.decided = {"admitted": 0, "refused": 0, "by_proxy": 0}  # for GET /v1/load

    async def admit(self, authorization: str | None, decode_tokens: int) -> int | None:
        """The key's quota (429), then the engine's expected wait for its tenant (503).
        Returns the view's reservation, counted at `decode_tokens` until the body sizes it
        (None: not counted). A missing or bad key passes: the route answers it 401."""
        arrived = time.perf_counter()
        try:
            tenant = tenant_for(authorization, self.keys)
        except APIError:
            return None
        try:
            self.quotas.admit(tenant)
            rid = await self.load.check(tenant, decode_tokens)
            self.decided["admitted"] += 1
            return rid
        except APIError as exc:
            self._refused(exc, arrived)
            raise

    def admit_admitted(self, authorization: str | None) -> None:
        """A request the proxy admitted: only the tokens quota, which only the Ingress spends."""
        arrived = time.perf_counter()
        self.decided["by_proxy"] += 1
        try:
            tenant = tenant_for(authorization, self.keys)
        except APIError:
            return
        try:
            self.quotas.check_tokens(tenant)
        except APIError as exc:
            self._refused(exc, arrived)
            raise

    def trusts(self, marker: bytes | None) -> bool:
        """The request carries this app's secret: Serve's proxy admitted it."""
        return bool(marker) and bool(self.secret) and hmac.compare_digest(marker, self.secret.encode())

    def _refused(self, exc: APIError, arrived: float) -> None:
        self.decided["refused"] += 1
        self.metrics.refused("quota" if exc.status == 429 else "expected_wait_early",
                             time.perf_counter() - arrived)
