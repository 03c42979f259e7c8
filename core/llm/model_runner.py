"""One forward pass of the causal LM over new tokens plus a KV cache, in numpy.

Batch rows are right-padded: row b holds `lens[b]` valid cached tokens at the start of its KV
rows, and `query_lens[b]` valid new tokens at the start of its input row. The graph's fused
attention appends each row's new keys/values right after its valid ones.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .kv_slots import KVSlots
from .session import make_session


@dataclass
class KVCache:
    """Per-layer keys and values [B,KV,T,D]; `lens[b]` leading positions of row b are valid."""

    keys: list[np.ndarray]
    values: list[np.ndarray]
    lens: np.ndarray  # [B] int

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values, strict=True))

    def select(self, rows: list[int], length: int | None = None) -> KVCache:
        """A cache of the given rows, trimmed to `length` positions (default: longest row)."""
        lens = self.lens[rows]
        t = int(lens.max(initial=0)) if length is None else length
        return KVCache([k[rows, :, :t] for k in self.keys], [v[rows, :, :t] for v in self.values],
                       np.minimum(lens, t))

    def truncate(self, length: int) -> KVCache:
        """Roll every row back to at most `length` tokens (rejected draft tokens)."""
        return self.select(list(range(len(self.lens))), length)


class ModelRunner:
    def __init__(self, path: str, n_layers: int, n_kv_heads: int, head_dim: int,
                 threads: int | None = None, spinning: bool = False, device: str = "auto",
                 park_after_run: bool = False):
        self.session = make_session(path, threads, spinning, device, park_after_run)
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.vocab_size: int = self.session.get_outputs()[0].shape[-1]
        self._out_names = [o.name for o in self.session.get_outputs()]
        # Per KV-slot buffer set and row range: a binding with every layer's past/present bound to
        # the slots in place. Binding 60 buffers cost ~0.5 ms a step, a few % of a batch-1 decode
        # step; a step now rebinds only its small inputs and the logits.
        self._bindings: weakref.WeakKeyDictionary[KVSlots, dict[tuple[int, int], ort.IOBinding]] = (
            weakref.WeakKeyDictionary())

    def empty_kv(self, batch: int = 1) -> KVCache:
        shape = (batch, self.n_kv_heads, 0, self.head_dim)
        return KVCache([np.zeros(shape, np.float32) for _ in range(self.n_layers)],
                       [np.zeros(shape, np.float32) for _ in range(self.n_layers)],
                       np.zeros(batch, np.int64))

    def forward(self, input_ids: np.ndarray, query_lens: np.ndarray, kv: KVCache,
                logits_idx: np.ndarray) -> tuple[np.ndarray, KVCache]:
        """input_ids [B,S] (right-padded), query_lens [B], logits_idx [B,L] -> logits [B,L,V]."""
        query_lens = np.asarray(query_lens, np.int64)
        total = kv.lens + query_lens
        feed = {
            "input_ids": np.ascontiguousarray(input_ids, np.int64),
            "seqlens_k": (total - 1).astype(np.int32),
            "total_seq_len": np.array(total.max(), np.int32),
            "query_lens": query_lens.astype(np.int32),
            "logits_idx": np.asarray(logits_idx, np.int64)[..., None],
        }
        for i in range(self.n_layers):
            feed[f"past_key.{i}"] = kv.keys[i]
            feed[f"past_value.{i}"] = kv.values[i]
        out = self.session.run(self._out_names, feed)
        return out[0], KVCache(out[1::2], out[2::2], total)

    def forward_slots(self, slots: KVSlots, lo: int, hi: int, input_ids: np.ndarray,
                      query_lens: np.ndarray, logits_idx: np.ndarray) -> np.ndarray:
        """Run slots [lo, hi) in place: new KV lands right after each row's valid tokens.

        Rows with query_lens 0 are idle: they attend nothing and their KV is left untouched.
        """
        query_lens = np.asarray(query_lens, np.int64)
        total = slots.lens[lo:hi] + query_lens
        bind = self._kv_binding(slots, lo, hi)
        bind.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, np.int64))
        # An idle, empty row would give -1, which the kernel rejects; it appends nothing anyway.
        bind.bind_cpu_input("seqlens_k", np.maximum(total - 1, 0).astype(np.int32))
        bind.bind_cpu_input("total_seq_len", np.array(max(int(total.max()), 1), np.int32))
        bind.bind_cpu_input("query_lens", query_lens.astype(np.int32))
        logits_idx = np.asarray(logits_idx, np.int64)
        bind.bind_cpu_input("logits_idx", logits_idx[..., None])
        # A fresh array each step: callers may keep logits while the next step runs.
        logits = np.empty((hi - lo, logits_idx.shape[1], self.vocab_size), np.float32)
        bind.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        self.session.run_with_iobinding(bind)
        slots.lens[lo:hi] = total
        return logits

    def _kv_binding(self, slots: KVSlots, lo: int, hi: int) -> ort.IOBinding:
        per_range = self._bindings.setdefault(slots, {})
        if (lo, hi) not in per_range:
            bind = self.session.io_binding()
            for i in range(self.n_layers):
                for kind, buffers in (("key", slots.keys), ("value", slots.values)):
                    shared = ort.OrtValue.ortvalue_from_numpy(buffers[i][lo:hi])
                    bind.bind_ortvalue_input(f"past_{kind}.{i}", shared)
                    bind.bind_ortvalue_output(f"present_{kind}.{i}", shared)
            per_range[(lo, hi)] = bind
        return per_range[(lo, hi)]
