"""Which model files a replica loads: the base build, and a quantized variant made on demand."""

from __future__ import annotations

from pathlib import Path

from core.build.artifacts import build_llm


def built_variant_dir(variant: str) -> Path:
    """The model directory holding `<variant>.onnx`: the base build (made or found cached), with
    variants beyond it made on demand (what TextGenerator loads)."""
    model_dir = build_llm(progress=lambda _: None)
    if not (model_dir / f"{variant}.onnx").exists():
        # Only then: the quantizer (onnx, ORT quantization) is heavy for a replica that needs none.
        from core.quant.variants import ensure_variant

        ensure_variant(model_dir, variant)
    return model_dir
