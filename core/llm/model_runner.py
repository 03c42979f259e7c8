"""One forward pass of the causal LM over new tokens plus a KV cache, in numpy.

Batch rows are right-padded: row b holds `lens[b]` valid cached tokens at the start of its KV
rows, and `query_lens[b]` valid new tokens at the start of its input row. The graph's fused
attention appends each row's new keys/values right after its valid ones, plus positions that are
not valid (the "padded" flavor: all S; the "query_lens" flavor: its one extra attention token;
see core/build/llama.py); `lens` counts only the valid ones, so those are overwritten later.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .device_kv import DeviceKVSlots
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


def fitting_groups(lens: np.ndarray, query_lens: np.ndarray, capacity: int) -> list[tuple[int, int]]:
    """Row ranges [a, b) to run as one forward each. Idle rows (query_lens 0) outside every range
    are not run. One range in the usual cases: a decode step, a prefill of fresh prompts.

    A range must keep every row in it (idle ones included) within `capacity` after its width of
    new positions is written, and, wider than one token, must be one row or all fresh rows:
    ONNX Runtime 1.31's GroupQueryAttention takes several new tokens after a past only at batch
    size 1 ("batch_size must be 1 when sequence_length > 1 and past context is given"). So chunked
    prefill after a first chunk or a cached prefix, and batched verification, run row by row.
    """
    groups: list[tuple[int, int]] = []
    start, end, width = None, 0, 0
    for row in np.flatnonzero(query_lens):
        wider = max(width, int(query_lens[row]))
        if start is not None:
            past = int(lens[start:row + 1].max())
            if past + wider <= capacity and (wider == 1 or past == 0):
                end, width = row + 1, wider
                continue
            groups.append((start, end))
        start, end, width = int(row), int(row) + 1, int(query_lens[row])
    if start is not None:
        groups.append((start, end))
    return groups


class ModelRunner:
    def __init__(self, path: str, n_layers: int, n_kv_heads: int, head_dim: int,
                 threads: int | None = None, spinning: bool = False, device: str = "auto",
                 park_after_run: bool = False):
        self.session = make_session(path, threads, spinning, device, park_after_run)
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.vocab_size = int(self.session.get_outputs()[0].shape[-1])
        self._out_names = [o.name for o in self.session.get_outputs()]
        kv_type = next(i.type for i in self.session.get_inputs() if i.name == "past_key.0")
        self.kv_dtype = {"tensor(float16)": np.float16, "tensor(int8)": np.int8}.get(kv_type, np.float32)
        # core/build/llama.py's two graph flavors: rows of any width in one forward, or padded rows
        self.takes_query_lens = any(i.name == "query_lens" for i in self.session.get_inputs())
        # Where make_slots puts KV: None = numpy arrays on the host; "cuda" = the GPU's memory.
        self.kv_device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else None
        # Per KV-slot buffer set and row range: a binding with every layer's past/present bound to
        # the slots in place. Binding 60 buffers cost ~0.5 ms a step, a few % of a batch-1 decode
        # step; a step now rebinds only its small inputs and the logits.
        self._bindings: weakref.WeakKeyDictionary[KVSlots, dict[tuple[int, int], ort.IOBinding]] = (
            weakref.WeakKeyDictionary())

    def empty_kv(self, batch: int = 1) -> KVCache:
        shape = (batch, self.n_kv_heads, 0, self.head_dim)
        return KVCache([np.zeros(shape, self.kv_dtype) for _ in range(self.n_layers)],
                       [np.zeros(shape, self.kv_dtype) for _ in range(self.n_layers)],
                       np.zeros(batch, np.int64))

    def make_slots(self, n_slots: int, capacity: int) -> KVSlots:
        """KV slots in this graph's KV dtype, in the memory the session computes in: on CUDA the
        GPU's (host slots would be copied over and back at every step)."""
        if self.kv_device:
            return DeviceKVSlots(self.n_layers, self.n_kv_heads, self.head_dim, n_slots, capacity,
                                 self.kv_dtype, device=self.kv_device)
        return KVSlots(self.n_layers, self.n_kv_heads, self.head_dim, n_slots, capacity, self.kv_dtype)

    def forward(self, input_ids: np.ndarray, query_lens: np.ndarray, kv: KVCache,
                logits_idx: np.ndarray) -> tuple[np.ndarray, KVCache]:
        """input_ids [B,S] (right-padded), query_lens [B], logits_idx [B,L] -> logits [B,L,V]."""
        query_lens = np.asarray(query_lens, np.int64)
        input_ids = np.ascontiguousarray(input_ids, np.int64)
        feed = {"input_ids": input_ids, "logits_idx": np.asarray(logits_idx, np.int64)[..., None],
                **self._lengths(kv.lens, query_lens, input_ids.shape[1])}
        for i in range(self.n_layers):
            feed[f"past_key.{i}"] = kv.keys[i]
            feed[f"past_value.{i}"] = kv.values[i]
        out = self.session.run(self._out_names, feed)
        return out[0], KVCache(out[1::2], out[2::2], kv.lens + query_lens)

    def forward_slots(self, slots: KVSlots, lo: int, hi: int, input_ids: np.ndarray,
                      query_lens: np.ndarray, logits_idx: np.ndarray) -> np.ndarray:
        """Run slots [lo, hi) in place: new KV lands right after each row's valid tokens.

        Rows with query_lens 0 are idle: their valid KV is left untouched (the padding written
        after it is dropped). A batch whose width would write past some row's buffer runs as
        several narrower forwards (`fitting_groups`); the logits are the same either way.
        """
        query_lens = np.asarray(query_lens, np.int64)
        input_ids = np.asarray(input_ids, np.int64)
        logits_idx = np.asarray(logits_idx, np.int64)
        lens = slots.lens[lo:hi].copy()
        if np.any(lens + query_lens > slots.capacity):
            raise ValueError("a row's new tokens do not fit its KV slot")
        if self.takes_query_lens:  # any rows, any widths: one forward
            logits = self._run_slots(slots, lo, hi, input_ids, query_lens, logits_idx)
        else:
            logits = np.zeros((hi - lo, logits_idx.shape[1], self.vocab_size), np.float32)
            for a, b in fitting_groups(lens, query_lens, slots.capacity):
                width = int(query_lens[a:b].max())
                logits[a:b] = self._run_slots(slots, lo + a, lo + b, input_ids[a:b, :width],
                                              query_lens[a:b], logits_idx[a:b])
        slots.lens[lo:hi] = lens + query_lens
        return logits

    def _lengths(self, lens: np.ndarray, query_lens: np.ndarray, width: int) -> dict[str, np.ndarray]:
        """The graph's length inputs for rows holding `lens` tokens and getting `query_lens` of
        `width` new positions."""
        if self.takes_query_lens:
            total = lens + query_lens
            # An idle, empty row would give -1, which the kernel rejects; it appends nothing anyway.
            return {"seqlens_k": np.maximum(total - 1, 0).astype(np.int32),
                    "total_seq_len": np.array(max(int(total.max()), 1), np.int32),
                    "query_lens": query_lens.astype(np.int32)}
        written = lens + width  # every row gets all `width` positions, padding included
        return {"seqlens_k": (written - 1).astype(np.int32),
                "total_seq_len": np.array(written.max(), np.int32)}

    def _run_slots(self, slots: KVSlots, lo: int, hi: int, input_ids: np.ndarray,
                   query_lens: np.ndarray, logits_idx: np.ndarray) -> np.ndarray:
        bind = self._kv_binding(slots, lo, hi)
        bind.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids))
        for name, value in self._lengths(slots.lens[lo:hi], query_lens, input_ids.shape[1]).items():
            bind.bind_cpu_input(name, value)
        bind.bind_cpu_input("logits_idx", np.ascontiguousarray(logits_idx)[..., None])
        # A fresh array each step: callers may keep logits while the next step runs.
        logits = np.empty((hi - lo, logits_idx.shape[1], self.vocab_size), np.float32)
        bind.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        self.session.run_with_iobinding(bind)
        return logits

    def _kv_binding(self, slots: KVSlots, lo: int, hi: int) -> ort.IOBinding:
        if self.kv_device and not isinstance(slots, DeviceKVSlots):
            # Host slots on CUDA: ORT would copy past to the GPU and present back from another
            # buffer, and GroupQueryAttention writes only the new positions in place: the rest
            # comes back uninitialized (measured: garbage text, bench/results/gpu_smoke_host_kv.json).
            raise ValueError("KV slots on the host for a session on the GPU: use make_slots")
        per_range = self._bindings.setdefault(slots, {})
        if (lo, hi) not in per_range:
            bind = self.session.io_binding()
            slots.bind_range(bind, lo, hi)
            per_range[(lo, hi)] = bind
        return per_range[(lo, hi)]
