"""Quotas per API key (tenant): requests per minute and tokens per minute, as token buckets.

A bucket holds up to a minute's allowance and refills continuously. A request spends one from
the requests bucket when it arrives (before any tokenization), and its prompt + max_tokens from
the tokens bucket once its prompt is tokenized; the tokens it did not generate are given back
when it ends. The tokens bucket may go into debt by one request's worth: a client learns it is
over quota at its next request, which costs nothing to refuse.

Counted per ingress replica: with N ingress replicas behind Serve's proxy (which spreads
requests evenly), a key gets up to ~N times its quota across the cluster. Divide the configured
limits by the Ingress' num_replicas for a cluster-wide cap (see README, "Overload"). With the
refusal in Serve's proxy (proxy_refusal.py), requests are counted per proxy (one per node) and
tokens per Ingress replica.
"""

from __future__ import annotations

import math
import time

from pydantic import BaseModel, ConfigDict, Field

from .errors import APIError


class QuotaArgs(BaseModel):
    """One tenant's limits; None = unlimited."""

    model_config = ConfigDict(extra="forbid")
    requests_per_min: int | None = Field(None, ge=1)
    tokens_per_min: int | None = Field(None, ge=1, description="prompt + completion tokens")


class Bucket:
    def __init__(self, per_min: int) -> None:
        self.capacity, self.rate = float(per_min), per_min / 60.0
        self.level, self.at = float(per_min), time.monotonic()

    def refill(self) -> float:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now
        return self.level

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.refill()) / self.rate)


class Quotas:
    """Buckets per tenant, from `{tenant: QuotaArgs}`; "*" applies to tenants not listed."""

    def __init__(self, limits: dict[str, QuotaArgs] | None) -> None:
        self.limits = dict(limits or {})
        self.requests: dict[str, Bucket] = {}
        self.tokens: dict[str, Bucket] = {}

    def _bucket(self, kind: str, tenant: str) -> Bucket | None:
        args = self.limits.get(tenant) or self.limits.get("*")
        per_min = getattr(args, f"{kind}_per_min", None) if args else None
        if per_min is None:
            return None
        buckets = self.requests if kind == "requests" else self.tokens
        if tenant not in buckets:
            buckets[tenant] = Bucket(per_min)
        return buckets[tenant]

    def admit(self, tenant: str) -> None:
        """Spend one request, or raise 429 if the key is out of requests or in token debt."""
        self.check_tokens(tenant)
        requests = self._bucket("requests", tenant)
        if requests is not None:
            wait = requests.seconds_until(1)
            if wait > 0:
                raise _over("requests", requests, wait)
            requests.level -= 1

    def counts_tokens(self, tenant: str) -> bool:
        """The tenant has a tokens quota (creates no bucket)."""
        args = self.limits.get(tenant) or self.limits.get("*")
        return args is not None and args.tokens_per_min is not None

    def check_tokens(self, tenant: str) -> None:
        """Raise 429 if the key is in token debt (spends nothing)."""
        tokens = self._bucket("tokens", tenant)
        if tokens is not None and tokens.refill() <= 0:
            raise _over("tokens", tokens, tokens.seconds_until(1))

    def spend_tokens(self, tenant: str, n: int) -> None:
        tokens = self._bucket("tokens", tenant)
        if tokens is not None:
            tokens.refill()
            tokens.level -= n

    def give_back(self, tenant: str, n: int) -> None:
        """Tokens reserved but not generated (the request stopped before max_tokens)."""
        tokens = self._bucket("tokens", tenant)
        if tokens is not None and n > 0:
            tokens.refill()
            tokens.level = min(tokens.capacity, tokens.level + n)


def _over(kind: str, bucket: Bucket, wait_s: float) -> APIError:
    retry = max(1, math.ceil(wait_s))
    return APIError(429, f"rate limit reached for {kind}: {int(bucket.capacity)} {kind} per minute "
                         f"for this API key; retry after {retry} s", None, "rate_limit_exceeded",
                    kind, headers={"Retry-After": str(retry)})
