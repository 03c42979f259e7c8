"""The embedder through the same ModelQuantizer: int8 dynamic (per-tensor / per-channel) and fp16,
judged by cosine to the fp32 vectors and nearest-neighbour stability on data/sentences.txt."""

from __future__ import annotations

from pathlib import Path

from ..embedder import Embedder
from ..llm.session import make_session
from ..timing import timed_calls
from .quality import embedder_quality, load_sentences
from .quantizer import ModelQuantizer

EMBEDDER_VARIANTS = {
    "int8-dyn": lambda q, out: q.dynamic_int8(out, per_channel=False),
    "int8-dyn-pc": lambda q, out: q.dynamic_int8(out, per_channel=True),
    "fp16": lambda q, out: q.fp16(out),
}


def ensure_embedder_variant(embedder_dir: Path, name: str, progress: bool = True) -> Path:
    """`model.onnx` is fp32; variants sit beside it as model-<name>.onnx (rebuilt if older)."""
    src = Path(embedder_dir) / "model.onnx"
    if name == "fp32":
        return src
    if name not in EMBEDDER_VARIANTS:
        raise ValueError(f"unknown embedder variant {name!r}; known: fp32, {', '.join(EMBEDDER_VARIANTS)}")
    out = src.with_name(f"model-{name}.onnx")
    if not out.exists() or out.stat().st_mtime_ns < src.stat().st_mtime_ns:
        EMBEDDER_VARIANTS[name](ModelQuantizer(src, "embedder", progress), out)
    return out


def _best_s(fn, repeats: int) -> float:
    """Best of `repeats` timed calls after a warm-up: contention on a shared machine only adds."""
    return min(timed_calls(fn, repeats))


def evaluate_embedder(embedder_dir: Path, threads: int = 2, repeats: int = 3,
                      progress: bool = True) -> list[dict]:
    """One row per embedder variant: bytes, texts/s (one at a time and 48 at once), quality."""
    sentences = load_sentences()
    emb = Embedder(embedder_dir, threads=threads, device="cpu")
    ref = emb.embed(sentences)
    rows = []
    for name in ["fp32", *EMBEDDER_VARIANTS]:
        path = ensure_embedder_variant(embedder_dir, name, progress)
        emb.session = make_session(str(path), threads, device="cpu")
        one = _best_s(lambda: [emb.embed([s]) for s in sentences[:16]], repeats) / 16
        batch = _best_s(lambda: emb.embed(sentences), repeats)
        rows.append({"name": name, "bytes": path.stat().st_size,
                     "texts_per_s_b1": round(1 / one, 1),
                     "texts_per_s_batch": round(len(sentences) / batch, 1),
                     **embedder_quality(ref, emb.embed(sentences))})
    return rows
