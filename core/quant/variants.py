"""Named LM variants, built on demand from the base build and cached beside it.

`ensure_variant(model_dir, name)` returns `<model_dir>/<name>.onnx`, building it first when it is
missing or stale. Staleness: variants.json records, per variant, the quantizer version and the
size/mtime of the file it was made from, so a rebuilt fp32.onnx/q4.onnx invalidates what was
derived from it. The base variants (fp32, q4) come from core.build and are never rebuilt here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from .graph_edit import (
    float16_graph,
    fused_attention,
    head_from_table,
    int8_kv_cache,
    own_matmul,
    padded_flavor,
    save,
    set_accuracy_level,
)
from .quantizer import ModelQuantizer

QUANT_VERSION = "1"
BASE = ("fp32", "q4")


@dataclass(frozen=True)
class VariantSpec:
    name: str
    bits: int  # bits per weight of the bulk of the matmuls
    technique: str
    source: str  # the base file it is made from
    device: str = "any"  # "gpu": listed and measured, but not a CPU pick
    build: Callable[[Path, Path, bool], None] | None = None  # (source file, out file, progress)
    revision: int = 1  # bump when the recipe changes: cached copies are rebuilt


def _lossless_acc0(src: Path, out: Path, progress: bool) -> None:
    # Same GGUF blocks as q4 with fp32 activations in the 4-bit matmuls, and the head computed from
    # the fp32 table like the fp32 graph does: the fp32 model's function up to summation order.
    # Not acc0 on the 8-bit head: that kernel decoded 8x slower on this CPU (7 vs 55 tok/s), and
    # int8 activations in the head alone flipped answers (measured on the task set).
    save(head_from_table(set_accuracy_level(onnx.load(str(src)), 0, bits=4)), out)


def _gpu_fp16(src: Path, out: Path, progress: bool) -> None:
    # The GPU graph: q4's lossless GGUF blocks in MatMulNBits (4-bit, 8-bit head) with float16
    # activations, KV and scales, so that every node gets the float16 inputs its CUDA kernel is
    # registered for (tests/test_gpu_kernels.py). accuracy_level 0: CUDA ignores it; on a CPU (the
    # fallback, CI) it keeps activations in float instead of int8, so the CPU reproduces the GPU's
    # numerics (max logit error vs fp32 0.06 on a 16-token prompt; 2.05 at level 4).
    # In the GPU wheel's flavor whatever runs here (graph_edit.padded_flavor).
    save(float16_graph(set_accuracy_level(padded_flavor(onnx.load(str(src))), 0)), out)


def _fp16(src: Path, out: Path, progress: bool) -> None:
    # ORT's float16 converter over the fp32 graph, in the GPU wheel's flavor (padded_flavor).
    padded = out.with_name(f".{out.stem}-padded-fp32.onnx")
    save(padded_flavor(onnx.load(str(src))), padded)
    try:
        ModelQuantizer(padded, "lm", progress).fp16(out)
    finally:
        padded.unlink(missing_ok=True)


def _int8_kv(src: Path, out: Path, progress: bool) -> None:
    # w8-rtn32 (src) with its KV cache in int8, scales from the largest |K|, |V| per channel on
    # the calibration text: a quarter of the KV bytes to hold and to read at each decode step.
    from .calibration import kv_absmax

    k_max, v_max = kv_absmax(src)
    save(int8_kv_cache(onnx.load(str(src)), k_max / 127, v_max / 127), out)


def _fused_attention(half_kv: bool) -> Callable[[Path, Path, bool], None]:
    def build(src: Path, out: Path, progress: bool) -> None:
        # w8-rtn32 (src) with every GroupQueryAttention replaced by core/llm/kernels/attention.c
        save(fused_attention(onnx.load(str(src)), half_kv=half_kv), out)
    return build


def _own_matmul(src: Path, out: Path, progress: bool) -> None:
    # w8-fa16 (src) with every MatMulNBits replaced by core/llm/kernels/matmul.c
    save(own_matmul(onnx.load(str(src))), out)


def _with(method: str, **kwargs) -> Callable[[Path, Path, bool], None]:
    def build(src: Path, out: Path, progress: bool) -> None:
        getattr(ModelQuantizer(src, "lm", progress), method)(out, **kwargs)
    return build


def _static(src: Path, out: Path, progress: bool) -> None:
    from .calibration import LMCalibrationReader

    ModelQuantizer(src, "lm", progress).static_int8_qdq(out, LMCalibrationReader(src),
                                                       per_channel=True)


SPECS: dict[str, VariantSpec] = {s.name: s for s in [
    VariantSpec("fp32", 32, "fp32 (GGUF dequantized), the reference", "fp32"),
    VariantSpec("q4", 4, "GGUF Q4_1 blocks -> MatMulNBits, lossless weights, accuracy_level 4", "q4"),
    VariantSpec("q4-acc0", 4, "GGUF Q4_1 blocks -> MatMulNBits, lossless weights, accuracy_level 0, "
                "fp32 tied head", "q4", build=_lossless_acc0, revision=2),
    VariantSpec("int8-dyn", 8, "int8 dynamic, per-tensor weights (MatMul)", "fp32",
                build=_with("dynamic_int8", per_channel=False)),
    VariantSpec("int8-dyn-pc", 8, "int8 dynamic, per-channel weights (MatMul)", "fp32",
                build=_with("dynamic_int8", per_channel=True)),
    VariantSpec("int8-qdq", 8, "int8 static QDQ, per-channel weights, MinMax calibration (MatMul)",
                "fp32", build=_static, revision=2),
    VariantSpec("w8-rtn32", 8, "int8 weight-only MatMulNBits RTN block 32, accuracy_level 4", "fp32",
                build=_with("weight_only", bits=8, block_size=32)),
    VariantSpec("w8-kv8", 8, "w8-rtn32 with an int8 KV cache (static per-channel scales)", "w8-rtn32",
                build=_int8_kv),
    VariantSpec("w8-fa", 8, "w8-rtn32 with the project's attention kernel (core/llm/kernels): each "
                "row's keys/values read once for its query heads, batch-invariant by construction",
                "w8-rtn32", build=_fused_attention(half_kv=False)),
    VariantSpec("w8-fa16", 8, "w8-fa with a float16 KV cache: half the KV bytes read per step",
                "w8-rtn32", build=_fused_attention(half_kv=True)),
    VariantSpec("w8-own", 8, "w8-fa16 with the project's int8 matmul (core/llm/kernels): the same "
                "weights and arithmetic, packed for AVX-512 VNNI, batch-invariant", "w8-fa16",
                build=_own_matmul),
    VariantSpec("int4-rtn32", 4, "int4 weight-only MatMulNBits RTN block 32 asym, accuracy_level 4",
                "fp32", build=_with("weight_only", bits=4, block_size=32)),
    VariantSpec("int4-rtn128", 4, "int4 weight-only MatMulNBits RTN block 128 asym, accuracy_level 4",
                "fp32", build=_with("weight_only", bits=4, block_size=128)),
    VariantSpec("int4-hqq32", 4, "int4 weight-only MatMulNBits HQQ block 32, accuracy_level 4", "fp32",
                build=_with("weight_only", bits=4, block_size=32, algorithm="hqq")),
    VariantSpec("q4-fp16", 4, "GGUF Q4_1 blocks -> MatMulNBits, float16 activations and KV (the GPU "
                "graph)", "q4", device="gpu", build=_gpu_fp16, revision=4),
    VariantSpec("fp16", 16, "fp16 weights and ops (a GPU variant; CPU runs it with casts)", "fp32",
                device="gpu", build=_fp16, revision=3),
]}


def variant_names() -> list[str]:
    return list(SPECS)


def spec(name: str) -> VariantSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown LM variant {name!r}; known: {', '.join(SPECS)}") from None


@contextlib.contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    """Concurrent replicas asking for the same variant build it once."""
    with (model_dir / ".variants.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _stamp(s: VariantSpec, src: Path) -> dict:
    st = src.stat()
    return {"version": f"{QUANT_VERSION}.{s.revision}", "source": src.name, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def _read_stamps(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "variants.json").read_text())
    except (OSError, ValueError):
        return {}


def ensure_variant(model_dir: Path, name: str, progress: bool = True) -> Path:
    """The path of variant `name` in `model_dir`, built (with a progress bar) if missing or stale."""
    model_dir = Path(model_dir)
    s = spec(name)
    out = model_dir / f"{name}.onnx"
    if s.build is None:
        if not out.exists():
            raise FileNotFoundError(f"{out} is a base variant: build it with `python -m core.build`")
        return out
    src = model_dir / f"{s.source}.onnx"
    if s.source not in BASE:  # made from another variant: that one first
        ensure_variant(model_dir, s.source, progress)
    if not src.exists():
        raise FileNotFoundError(f"{name} is made from {src}, which is missing: run `python -m core.build`")
    with _locked(model_dir):
        stamps = _read_stamps(model_dir)
        if out.exists() and stamps.get(name) == _stamp(s, src):
            return out
        _build(s, src, out, progress)
        stamps = _read_stamps(model_dir)  # re-read: another variant may have been added meanwhile
        stamps[name] = _stamp(s, src)
        (model_dir / "variants.json").write_text(json.dumps(stamps, indent=1))
    return out


def _build(s: VariantSpec, src: Path, out: Path, progress: bool) -> None:
    from tqdm import tqdm

    with tqdm(total=1, desc=f"building {s.name}", unit="variant", disable=not progress) as bar:
        bar.set_postfix_str(s.technique[:60])
        s.build(src, out, progress)
        bar.update()
