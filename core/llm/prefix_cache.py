"""Prefix cache: KV blocks of `block_size` tokens keyed by a chained hash of the whole prefix.

Why blocks with chained hashes (vLLM's design) rather than a radix tree (SGLang's): the engine
copies a hit into a sequence's KV slot, so the cache only has to answer "the longest cached
run of full blocks that starts this prompt", which a hash lookup per block does in O(blocks),
and eviction works on independent blocks under one byte budget.

- A hit is verified token by token (a hash collision can never serve wrong KV).
- Blocks are reference-counted while a sequence built on them is alive; only unreferenced
  blocks without cached children (chain tails) are evicted, least recently used first.
- The byte budget is never exceeded: an insert that cannot make room is skipped.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

KVReader = Callable[[int, int], tuple[list[np.ndarray], list[np.ndarray]]]  # (start, stop) -> K, V


def chain_hashes(tokens: list[int], block_size: int) -> list[bytes]:
    """One hash per full block; each covers the whole prefix up to the end of its block."""
    out, prev = [], b""
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = np.asarray(tokens[start:start + block_size], np.int64).tobytes()
        prev = hashlib.blake2b(prev + block, digest_size=16).digest()
        out.append(prev)
    return out


@dataclass(eq=False)
class Block:
    key: bytes
    parent: bytes | None
    tokens: tuple[int, ...]
    keys: list[np.ndarray]  # per layer [KV, block_size, D]
    values: list[np.ndarray]
    nbytes: int
    refs: int = 0
    children: int = 0


@dataclass
class PrefixCacheStats:
    queried_tokens: int = 0
    hit_tokens: int = 0
    evictions: int = 0
    inserted_blocks: int = 0


@dataclass
class PrefixCache:
    budget_bytes: int
    block_size: int = 16
    blocks: OrderedDict[bytes, Block] = field(default_factory=OrderedDict)  # oldest first
    bytes_in_use: int = 0
    stats: PrefixCacheStats = field(default_factory=PrefixCacheStats)

    def __post_init__(self) -> None:
        if self.budget_bytes < 0 or self.block_size < 1:
            raise ValueError("budget_bytes must be >= 0 and block_size >= 1")

    def _hashes(self, tokens: list[int]) -> list[bytes]:
        return chain_hashes(tokens, self.block_size)

    def match(self, tokens: list[int]) -> list[Block]:
        """Longest run of cached full blocks that starts `tokens`; the caller holds a reference
        to each until `release`."""
        self.stats.queried_tokens += len(tokens)
        found = []
        for i, key in enumerate(self._hashes(tokens)):
            block = self.blocks.get(key)
            want = tuple(tokens[i * self.block_size:(i + 1) * self.block_size])
            if block is None or block.tokens != want:
                break
            found.append(block)
        for block in reversed(found):  # the chain's head ends most recent: tails go first
            block.refs += 1
            self.blocks.move_to_end(block.key)
        self.stats.hit_tokens += len(found) * self.block_size
        return found

    def release(self, blocks: list[Block]) -> None:
        for block in blocks:
            block.refs -= 1
            assert block.refs >= 0, "released more often than matched"

    def insert(self, tokens: list[int], read: KVReader) -> int:
        """Cache every full block of `tokens` (whose KV `read(start, stop)` returns); returns
        the number of new blocks."""
        added, parent = 0, None
        for i, key in enumerate(self._hashes(tokens)):
            start = i * self.block_size
            want = tuple(tokens[start:start + self.block_size])
            block = self.blocks.get(key)
            if block is not None:
                if block.tokens != want:
                    break  # a hash collision: leave the cached chain as it is
                self.blocks.move_to_end(key)
            else:
                keys, values = read(start, start + self.block_size)
                nbytes = sum(a.nbytes for a in keys + values)
                if not self._make_room(nbytes, protect=parent):
                    break
                block = Block(key, parent, want, keys, values, nbytes)
                self.blocks[key] = block
                self.bytes_in_use += nbytes
                if parent is not None:
                    self.blocks[parent].children += 1
                added += 1
            parent = key
        self.stats.inserted_blocks += added
        return added

    def _make_room(self, nbytes: int, protect: bytes | None) -> bool:
        while self.bytes_in_use + nbytes > self.budget_bytes:
            victim = next((b for b in self.blocks.values()
                           if b.refs == 0 and b.children == 0 and b.key != protect), None)
            if victim is None:
                return False
            self._evict(victim)
        return True

    def _evict(self, block: Block) -> None:
        del self.blocks[block.key]
        self.bytes_in_use -= block.nbytes
        if block.parent is not None and block.parent in self.blocks:
            self.blocks[block.parent].children -= 1
        self.stats.evictions += 1

    def clear(self) -> None:
        for block in [b for b in self.blocks.values() if b.refs == 0]:
            self.blocks.pop(block.key)
            self.bytes_in_use -= block.nbytes
        for block in self.blocks.values():
            block.children = sum(1 for b in self.blocks.values() if b.parent == block.key)
