"""KV slots in the execution provider's memory (the GPU's, for CUDA).

With host slots (kv_slots.KVSlots) the CUDA provider copies the bound slot range's KV to the GPU
before every forward and back from another buffer after it: the output was wrong (only the new
positions are written in place) and the copy set the decode speed
(bench/results/gpu_smoke_host_kv.json). Here each layer's keys and values are one
OrtValue allocated on the device; a slot range [lo, hi) is bound by address (slots are the
outermost dimension, so a range is one contiguous block), and the graph appends in place there
as it does on the host. Only the prefix cache moves KV across: `read` and `write` copy one slot's
positions with one strided copy per layer (cudaMemcpy2D), after the forward that wrote them has
returned (ONNX Runtime synchronizes the provider at the end of a run).

`device="cpu"` keeps the same addressing in host memory: it lets the CPU tests cover this class.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
import onnxruntime as ort

from .kv_slots import KVSlots

_HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2  # cudaMemcpyKind


@functools.cache
def _cudart() -> ctypes.CDLL:
    """The CUDA runtime that onnxruntime-gpu's provider loaded (the same soname resolves to it)."""
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.cudaMemcpy2D.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                                     ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
        return lib
    raise RuntimeError("device KV slots: no CUDA runtime library (libcudart) found")


def copy_2d(device: str, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, rows: int,
            to_device: bool) -> None:
    """Copy `rows` rows of `width` bytes between host and device memory, each side with its pitch."""
    if device == "cpu":
        for r in range(rows):
            ctypes.memmove(dst + r * dst_pitch, src + r * src_pitch, width)
        return
    kind = _HOST_TO_DEVICE if to_device else _DEVICE_TO_HOST
    cudart = _cudart()
    err = cudart.cudaMemcpy2D(dst, dst_pitch, src, src_pitch, width, rows, kind)
    # From pageable host memory the call may return before the data reached the device, and
    # ONNX Runtime's stream does not wait for the default one: finish the copy before a forward.
    err = err or cudart.cudaDeviceSynchronize()
    if err:
        raise RuntimeError(f"cudaMemcpy2D failed with CUDA error {err}")


class DeviceKVSlots(KVSlots):
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, n_slots: int, capacity: int,
                 dtype: np.dtype | type = np.float16, device: str = "cuda", device_id: int = 0):
        super().__init__(n_layers, n_kv_heads, head_dim, 0, capacity, dtype)  # the fields, no arrays
        self.shape = (n_slots, *self.shape[1:])
        self.device, self.device_id, self.n_slots = device, device_id, n_slots
        self.lens = np.zeros(n_slots, np.int64)
        self.keys = [self._allocate() for _ in range(n_layers)]
        self.values = [self._allocate() for _ in range(n_layers)]
        itemsize = self.dtype.itemsize
        self._row_bytes = self.shape[2] * self.shape[3] * itemsize  # one head's positions
        self._slot_bytes = self.shape[1] * self._row_bytes
        self._position_bytes = self.shape[3] * itemsize

    def _allocate(self) -> ort.OrtValue:
        value = ort.OrtValue.ortvalue_from_shape_and_type(self.shape, self.dtype, self.device, self.device_id)
        if self.device == "cpu":  # uninitialized host memory: give it the zeros KVSlots has
            ctypes.memset(value.data_ptr(), 0, int(np.prod(self.shape)) * self.dtype.itemsize)
        return value

    def prefault(self) -> None:
        """Nothing to do: device memory is committed when it is allocated."""

    def _address(self, value: ort.OrtValue, slot: int, start: int) -> int:
        return value.data_ptr() + slot * self._slot_bytes + start * self._position_bytes

    def read(self, slot: int, start: int, stop: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        def one(value: ort.OrtValue) -> np.ndarray:
            out = np.empty((self.shape[1], stop - start, self.shape[3]), self.dtype)
            width = (stop - start) * self._position_bytes
            copy_2d(self.device, out.ctypes.data, width, self._address(value, slot, start),
                    self._row_bytes, width, self.shape[1], to_device=False)
            return out

        return [one(k) for k in self.keys], [one(v) for v in self.values]

    def write(self, slot: int, start: int, keys: list[np.ndarray], values: list[np.ndarray]) -> None:
        for dst, src in zip(self.keys + self.values, keys + values, strict=True):
            src = np.ascontiguousarray(src, self.dtype)
            width = src.shape[1] * self._position_bytes
            copy_2d(self.device, self._address(dst, slot, start), self._row_bytes, src.ctypes.data,
                    width, width, self.shape[1], to_device=True)

    def bind_range(self, binding: ort.IOBinding, lo: int, hi: int) -> None:
        shape = [hi - lo, *self.shape[1:]]
        for i in range(len(self.keys)):
            for kind, buffers in (("key", self.keys), ("value", self.values)):
                address = self._address(buffers[i], lo, 0)
                binding.bind_input(f"past_{kind}.{i}", self.device, self.device_id, self.dtype, shape,
                                   address)
                binding.bind_output(f"present_{kind}.{i}", self.device, self.device_id, self.dtype,
                                    shape, address)
