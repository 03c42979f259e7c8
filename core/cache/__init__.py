"""Response cache core, free of Ray: keys, the semantic guard and the chromadb store.

Usage (embedding: the prompt's, when keys.semantic_text is set; else None):

    keys = request_keys(model, "chat", body, tenant)
    if is_cacheable(body, opt_in, "chat"):
        hit = await store.lookup(keys, LookupMode.EXACT_THEN_SEMANTIC, embedding)
        ...
        await store.put(keys, response, embedding, model=model)
"""

from core.cache.config import DEFAULT_THRESHOLD, CacheConfig
from core.cache.guard import check as guard_check
from core.cache.keys import RequestKeys, is_cacheable, partition_name, request_keys
from core.cache.store import CacheHit, CacheStats, CacheStore, LookupMode, StoreLocked

__all__ = [
    "DEFAULT_THRESHOLD",
    "CacheConfig",
    "CacheHit",
    "CacheStats",
    "CacheStore",
    "LookupMode",
    "RequestKeys",
    "StoreLocked",
    "guard_check",
    "is_cacheable",
    "partition_name",
    "request_keys",
]
