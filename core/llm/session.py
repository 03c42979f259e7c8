"""ONNX Runtime session creation with explicit threading (Ray sets OMP_NUM_THREADS=1 in replicas)."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def providers(device: str = "auto") -> list[str]:
    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RuntimeError("device 'cuda' asked for, but this onnxruntime has no CUDA provider")
    return ["CPUExecutionProvider"]


def uses_own_matmul(path: str | Path) -> bool:
    """Whether the graph runs the project's matmul (core/llm/kernels/matmul.c). onnx.save writes
    a graph's nodes before its weights, so the op's name shows in the file's first bytes (parsing
    the whole 270 MB protobuf to ask would take ~1 s)."""
    try:
        with open(path, "rb") as f:
            return b"MatMulW8" in f.read(4 << 20)
    except OSError:
        return False


def make_session(path: str, threads: int | None = None, spinning: bool = False,
                 device: str = "auto", park_after_run: bool = False,
                 profile_prefix: str | None = None) -> ort.InferenceSession:
    """threads=None uses every core this process may run on.

    Spinning is off by default: replicas share cores, and spinning threads burn the CPU the
    other replica needs (measured 2x slower under contention).

    park_after_run: spin within a Run(), park the workers when it returns. For sessions that
    alternate in one process (a draft and its target): otherwise each one's still-spinning
    workers steal the cores the other needs (measured fp32 + q4 draft 1.15x with the draft not
    spinning, 1.43x with both spinning and parked; plain decoding unchanged, 39.6 vs 39.2 tok/s).

    profile_prefix: ONNX Runtime's profiler on, its JSON named from this prefix (bench/op_split.py).
    """
    opts = ort.SessionOptions()
    threads = threads or default_threads()
    # A graph whose matmuls and attention are the project's kernels: their own threads (which
    # spin between ops, pool.h) do the parallel work; ORT's would only compete for the cores.
    own_threads = device != "cuda" and uses_own_matmul(path)
    opts.intra_op_num_threads = 1 if own_threads else threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if park_after_run:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.log_severity_level = 3
    if device != "cuda":
        # the "-fa" variants' attention and w8-own's matmuls (core/llm/kernels); registering
        # costs nothing otherwise
        from .kernels import library_path

        library = library_path()
        if library is not None:
            # its threads: as many as the session's (read when the library registers)
            os.environ["EFFSERVE_KERNEL_THREADS"] = str(threads)
            opts.register_custom_ops_library(str(library))
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    session = ort.InferenceSession(path, opts, providers=providers(device))
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        # ORT falls back to the CPU with only a log line when the CUDA provider cannot load
        # (CUDA/cuDNN libraries missing, no GPU): a GPU deployment must fail instead.
        raise RuntimeError("device 'cuda': the CUDA execution provider did not load (see ONNX "
                           "Runtime's log: CUDA 13 / cuDNN 9 libraries, `make install-gpu`)")
    return session
