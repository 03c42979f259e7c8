"""Fixed-capacity KV buffers with one row (slot) per running sequence.

The graph's GroupQueryAttention writes new keys/values in place when its past and present
outputs are bound to the same buffer, so a decode step copies nothing: rolling back (rejected
draft tokens) is just lowering `lens`.

Capacity costs RAM: the first forward over a slot range touches most of its buffers (measured:
16 slots x 4096 tokens = 3 GB resident after one step, and that first step took 3 s longer).
`prefault` pays that once, before serving, instead of in the first requests that reach
those slots.

A forward over S new tokens writes S positions after every row's valid ones, padding included
(core/build/llama.py); ModelRunner.forward_slots never writes past a row's capacity: it splits a
batch whose width does not fit behind some row's valid tokens (rare: a long row beside a prefill).

The dtype is the graph's KV dtype (float16 in the GPU variants).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

# Positions past `capacity` that the graph may write into: its extra attention token's KV
# (core/build/llama.py) lands one past a row's valid tokens, which may be the last usable one.
HEADROOM = 1


class KVSlots:
    """Slots in host memory, as numpy arrays: what the CPU provider computes on in place."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, n_slots: int, capacity: int,
                 dtype: np.dtype | type = np.float32):
        self.shape = (n_slots, n_kv_heads, capacity + HEADROOM, head_dim)
        self.dtype = np.dtype(dtype)
        self.keys = [np.zeros(self.shape, dtype) for _ in range(n_layers)]
        self.values = [np.zeros(self.shape, dtype) for _ in range(n_layers)]
        self.lens = np.zeros(n_slots, np.int64)
        self.n_slots, self.capacity = n_slots, capacity
        self.bytes_per_token = 2 * n_layers * n_kv_heads * head_dim * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return 2 * len(self.keys) * int(np.prod(self.shape)) * self.dtype.itemsize

    def prefault(self) -> None:
        """Write every page now (np.zeros leaves them to the first touch)."""
        for buffer in self.keys + self.values:
            buffer.fill(0.0)

    def bytes_in_use(self) -> int:
        return int(self.lens.sum()) * self.bytes_per_token

    def read(self, slot: int, start: int, stop: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Copies of positions [start, stop) of one slot, per layer ([KV, n, D] each)."""
        return ([k[slot, :, start:stop].copy() for k in self.keys],
                [v[slot, :, start:stop].copy() for v in self.values])

    def write(self, slot: int, start: int, keys: list[np.ndarray], values: list[np.ndarray]) -> None:
        n = keys[0].shape[1]
        for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
            self.keys[layer][slot, :, start:start + n] = k
            self.values[layer][slot, :, start:start + n] = v

    def bind_range(self, binding: ort.IOBinding, lo: int, hi: int) -> None:
        """Bind every layer's past and present KV of slots [lo, hi) to the same memory, so the
        graph appends new positions in place."""
        for i in range(len(self.keys)):
            for kind, buffers in (("key", self.keys), ("value", self.values)):
                shared = ort.OrtValue.ortvalue_from_numpy(buffers[i][lo:hi])
                binding.bind_ortvalue_input(f"past_{kind}.{i}", shared)
                binding.bind_ortvalue_output(f"present_{kind}.{i}", shared)
