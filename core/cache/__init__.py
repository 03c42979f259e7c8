"""Response cache core, free of Ray: keys, the semantic guard and the chromadb store.

Usage (vector_or_None: the prompt's embedding when keys.semantic_text is set):

    keys = request_keys(model, "chat", body, tenant)
    if is_cacheable(body, opt_in, "chat"):
        hit = store.lookup(keys.exact, keys.partition, vector_or_None, keys.semantic_text)
        ...
        store.put(keys.exact, keys.partition, vector_or_None, keys.semantic_text, response, model=model)
"""

from core.cache.config import DEFAULT_THRESHOLD, CacheConfig
from core.cache.guard import check as guard_check
from core.cache.keys import RequestKeys, is_cacheable, partition_name, request_keys
from core.cache.store import CacheHit, CacheStats, CacheStore, StoreLocked

__all__ = [
    "DEFAULT_THRESHOLD",
    "CacheConfig",
    "CacheHit",
    "CacheStats",
    "CacheStore",
    "RequestKeys",
    "StoreLocked",
    "guard_check",
    "is_cacheable",
    "partition_name",
    "request_keys",
]
