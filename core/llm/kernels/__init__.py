"""The project's own ONNX Runtime kernels (C, compiled on first use with the machine's compiler).

`attention.c`: effserve.Attention, the CPU attention of the "-fa" LM variants (see its header).
The library is built once per source and machine into ~/.cache/effserve/kernels (a few seconds;
`cc -O3 -march=native`, so it uses this CPU's vector units) and registered on CPU sessions.
Without a C compiler `library_path()` is None and only graphs without the op can run.
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
SOURCE = Path(__file__).with_name("attention.c")
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
        log.warning("no C compiler: the fused attention kernel is unavailable")
        return None
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()
                            + platform.machine().encode() + _cpu_flags().encode()).hexdigest()[:16]
    out = cache_dir() / f"libeffattn-{digest}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        built = Path(tmp) / out.name
        done = subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCE), "-lm", "-lpthread"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            log.warning("fused attention kernel did not compile: %s", done.stderr[-2000:])
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
