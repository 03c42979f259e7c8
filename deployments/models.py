"""Which model files a replica loads: the base build, and a quantized variant made on demand."""

from __future__ import annotations

import logging
from pathlib import Path

from core.build.artifacts import build_llm

log = logging.getLogger(__name__)
# Variants whose matmuls are the project's kernel (core/llm/kernels/matmul.c): served only where
# its vector path runs; elsewhere their source, which has ONNX Runtime's matmul, is faster.
OWN_MATMUL = {"w8-own": "w8-fa16"}


def runnable_variant(variant: str, device: str) -> str:
    """`variant`, or what to serve instead on this machine (with a warning saying why)."""
    if variant not in OWN_MATMUL or device == "cuda":
        return variant
    from core.llm.kernels import matmul_vectorized

    if matmul_vectorized():
        return variant
    log.warning("%s: this CPU has no AVX-512 VNNI (or no C compiler), where its int8 matmul runs "
                "a slow portable loop; serving %s instead", variant, OWN_MATMUL[variant])
    return OWN_MATMUL[variant]


def built_variant_dir(variant: str) -> Path:
    """The model directory holding `<variant>.onnx`: the base build (made or found cached), with
    variants beyond it made on demand (what TextGenerator loads)."""
    model_dir = build_llm(progress=lambda _: None)
    if not (model_dir / f"{variant}.onnx").exists():
        # Only then: the quantizer (onnx, ORT quantization) is heavy for a replica that needs none.
        from core.quant.variants import ensure_variant

        ensure_variant(model_dir, variant)
    return model_dir
