"""Optional API keys: `Authorization: Bearer <key>`, each key mapped to a tenant.

Keys come from the app's args (`api_keys: {key: tenant}`) or the env var EFFSERVE_API_KEYS
("key1=tenantA,key2=tenantB"). With no keys configured, auth is off and every caller is
tenant "default". Comparison is constant-time, so response timing leaks nothing of a key.
"""

from __future__ import annotations

import hmac
import os

from .errors import APIError


def load_keys(configured: dict[str, str] | None) -> dict[str, str]:
    keys = dict(configured or {})
    for item in filter(None, os.environ.get("EFFSERVE_API_KEYS", "").split(",")):
        key, _, tenant = item.strip().partition("=")
        keys[key] = tenant or key[:8]
    return keys


def tenant_for(authorization: str | None, keys: dict[str, str]) -> str:
    if not keys:
        return "default"
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token:
        tenant = None
        for key, owner in keys.items():  # compare against every key: no early exit to time
            if hmac.compare_digest(key.encode(), token.strip().encode()):
                tenant = owner
        if tenant is not None:
            return tenant
    raise APIError(401, "missing or invalid API key (Authorization: Bearer <key>)", None,
                   "invalid_api_key", "authentication_error", headers={"WWW-Authenticate": "Bearer"})
