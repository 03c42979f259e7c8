"""The project's own ONNX Runtime kernels (C, compiled on first use with the machine's compiler).

`attention.c`: effserve.Attention, the CPU attention of the "-fa" LM variants; `matmul.c`:
effserve.MatMulW8, the int8 matmul of "w8-own" (see their headers); `pool.c` their threads,
`register.c` the entry point ONNX Runtime calls. The library is built once per source and machine
into ~/.cache/effserve/kernels (a few seconds; `cc -O3 -march=native`, so it uses this CPU's vector
units) and registered on CPU sessions. Without a C compiler `library_path()` is None and only
graphs without the ops can run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
SOURCES = [HERE / name for name in ("register.c", "pool.c", "attention.c", "matmul.c")]
HEADERS = [HERE / "ort_api.h", HERE / "pool.h"]
# -z nodelete: ONNX Runtime unloads a custom-op library with the last session that registered it;
# the kernel's worker threads (sleeping on its condition variables) must never outlive its code.
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-fvisibility=hidden", "-Wl,-z,nodelete"]


def cache_dir() -> Path:
    return Path(os.environ.get("EFFSERVE_KERNEL_DIR", Path.home() / ".cache" / "effserve" / "kernels"))


@cache
def library_path() -> Path | None:
    """The compiled library for this source, compiler flags and machine; built if missing."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler: the project's kernels are unavailable")
        return None
    code = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    digest = hashlib.sha256(code + " ".join(FLAGS).encode()
                            + platform.machine().encode() + _cpu_flags().encode()).hexdigest()[:16]
    out = cache_dir() / f"libeffattn-{digest}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        built = Path(tmp) / out.name
        done = subprocess.run([compiler, *FLAGS, "-o", str(built), *map(str, SOURCES), "-lm", "-lpthread"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            log.warning("the project's kernels did not compile: %s", done.stderr[-2000:])
            return None
        os.replace(built, out)  # atomic: replicas building at once each get a whole file
    return out


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


@cache
def matmul_vectorized() -> bool:
    """Whether effserve.MatMulW8 has its AVX-512 VNNI path on this machine. Without it the op runs
    a portable loop, correct but slower than ONNX Runtime's own MatMulNBits."""
    import ctypes

    path = library_path()
    return path is not None and bool(ctypes.CDLL(str(path)).EffserveMatmulVectorized())
