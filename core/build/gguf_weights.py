"""Read a llama-architecture GGUF: hyper-parameters, tokenizer metadata and quantized blocks.

Weights are kept in their GGUF block form so that the 4-bit build can map them into
ONNX Runtime's MatMulNBits without re-quantizing (lossless); the fp32 build dequantizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np

QK = 32  # GGUF block size for Q4_0/Q4_1/Q8_0


@dataclass(frozen=True)
class LlamaConfig:
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    context_length: int
    rope_base: float
    rms_eps: float
    bos_id: int
    eos_id: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    def __post_init__(self) -> None:
        if self.hidden % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"inconsistent head counts in {self}")


@dataclass
class BlockWeight:
    """A [rows, cols] weight in GGUF blocks along cols: w = scale * q + offset (offset 0 for Q8_0)."""

    q: np.ndarray  # [rows, cols // QK, QK] uint8 (Q4_1: 0..15) or int8 (Q8_0)
    scale: np.ndarray  # [rows, cols // QK] float32
    offset: np.ndarray | None  # [rows, cols // QK] float32, Q4_1 only
    bits: int

    def dequantize(self) -> np.ndarray:
        w = self.scale[..., None] * self.q.astype(np.float32)
        if self.offset is not None:
            w += self.offset[..., None]
        return w.reshape(self.q.shape[0], -1)


def _halfs(raw: np.ndarray, start: int) -> np.ndarray:
    return raw[..., start:start + 2].copy().view(np.float16)[..., 0].astype(np.float32)


def _blocks(tensor: gguf.ReaderTensor) -> BlockWeight | np.ndarray:
    rows = int(tensor.shape[1]) if len(tensor.shape) > 1 else 1
    raw = np.asarray(tensor.data)
    kind = tensor.tensor_type
    if kind == gguf.GGMLQuantizationType.F32:
        return raw.astype(np.float32).reshape(rows, -1) if rows > 1 else raw.astype(np.float32)
    if kind == gguf.GGMLQuantizationType.Q4_1:  # 2B scale, 2B min, 16B nibbles (j, j+16)
        blk = raw.reshape(rows, -1, 20)
        nib = blk[..., 4:]
        q = np.concatenate([nib & 0xF, nib >> 4], axis=-1)
        return BlockWeight(q, _halfs(blk, 0), _halfs(blk, 2), bits=4)
    if kind == gguf.GGMLQuantizationType.Q8_0:  # 2B scale, 32 int8
        blk = raw.reshape(rows, -1, 34)
        return BlockWeight(blk[..., 2:].copy().view(np.int8), _halfs(blk, 0), None, bits=8)
    raise NotImplementedError(f"{tensor.name}: GGUF type {kind.name} is not supported yet")


def read_gguf(path: str) -> tuple[LlamaConfig, dict[str, BlockWeight | np.ndarray], dict]:
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    arch = field("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r}, only llama is supported")
    tokens = field("tokenizer.ggml.tokens")
    cfg = LlamaConfig(
        n_layers=field("llama.block_count"),
        hidden=field("llama.embedding_length"),
        intermediate=field("llama.feed_forward_length"),
        n_heads=field("llama.attention.head_count"),
        n_kv_heads=field("llama.attention.head_count_kv"),
        vocab_size=len(tokens),
        context_length=field("llama.context_length"),
        rope_base=float(field("llama.rope.freq_base")),
        rms_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        bos_id=field("tokenizer.ggml.bos_token_id"),
        eos_id=field("tokenizer.ggml.eos_token_id"),
    )
    weights = {t.name: _blocks(t) for t in reader.tensors}
    meta = {"chat_template": field("tokenizer.chat_template"), "name": field("general.name")}
    return cfg, weights, meta
