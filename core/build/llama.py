"""Build a llama causal-LM ONNX graph (with KV cache) straight from GGUF weights, without torch.

Interface of the built model (B batch rows, S new tokens per row, right-padded; P cached tokens):
  inputs   input_ids [B,S] int64; seqlens_k [B] int32; total_seq_len [] int32 (max over rows of
           seqlens_k + 1); query_lens [B] int32 (valid new tokens per row; "query_lens" flavor
           only); logits_idx [B,L,1] int64 (which new positions to score, per row);
           past_key.{i}, past_value.{i} [B,KV,P,D], each row's valid tokens first
  outputs  logits [B,L,V]; present_key.{i}, present_value.{i} [B,KV,max(P, total_seq_len),D]

Two flavors, for the GroupQueryAttention of the ONNX Runtime that builds them (`gqa_flavor`):
  "query_lens" (ONNX Runtime >= 1.32, the CPU wheel): seqlens_k = cached + valid new - 1 per row,
      and query_lens says how many of the S new tokens are valid: rows of any width share a
      forward. Batch invariance: a row's logits are bit-identical whether it decodes alone, in a
      batch of any size, or as one of several query tokens of a verification step (speculative
      decoding). The one kernel whose arithmetic depended on that was attention: ORT's CPU
      GroupQueryAttention runs QK' and PV through MLAS's one-row GEMM for a single query token and
      the tiled kernel for several, which sum in different orders, and int8 activations magnify
      the difference into flipped near-ties. So every attention call gets one extra, all-zero
      query token after the real ones: a decode step is a two-token step for attention, always
      on the tiled kernel, while the projections and MLP see only the real tokens. Its key/value
      land one position past the row's valid KV (buffers keep one position of headroom) and are
      overwritten by the next token; causal masking hides it from the real queries.
  "padded" (ONNX Runtime 1.31, the newest onnxruntime-gpu): no per-row query length. Every row
      counts all S new tokens, padding included (seqlens_k = cached + S - 1): a row's padding
      lands in its KV right after its valid tokens, causal masking keeps it out of every valid
      output, and the caller's lengths make the next step overwrite it. With S > 1 after a past,
      1.31 takes one row only, so core/llm/model_runner.py splits such batches; no extra token
      (it would make every decode step such a batch).
Positions are implicit: row b's new tokens follow its cached ones.

Rotary embedding is applied in GGUF's interleaved layout: llama.cpp permuted the Q/K rows for it,
and Q.K is unchanged when both sides share that permutation, so nothing is un-permuted.

Variants: "fp32" dequantizes every weight; "q4" maps the GGUF blocks into MatMulNBits as is
(Q4_1 -> 4-bit with the block minimum added back exactly, Q8_0 -> 8-bit): lossless weights.
"""

from __future__ import annotations

import numpy as np
import onnx

from .gguf_weights import QK, BlockWeight, LlamaConfig
from .graph import FLOAT, INT32, INT64, MS, Graph

VARIANTS = ("fp32", "q4")
FLAVORS = ("query_lens", "padded")


def gqa_flavor() -> str:
    """The graph flavor the installed ONNX Runtime's GroupQueryAttention can run."""
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    schema = next(s for s in C.get_all_operator_schema()
                  if s.name == "GroupQueryAttention" and s.domain == MS)
    return "query_lens" if any(i.name == "query_seqlens" for i in schema.inputs) else "padded"


def _pack_nbits(q: np.ndarray, bits: int) -> np.ndarray:
    """[N, blocks, QK] unsigned codes -> MatMulNBits B layout [N, blocks, QK*bits/8]."""
    if bits == 8:
        return q.astype(np.uint8)
    q = q.astype(np.uint8)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


class LlamaBuilder:
    def __init__(self, cfg: LlamaConfig, weights: dict, variant: str, accuracy_level: int = 4,
                 flavor: str = "query_lens"):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
        self.cfg, self.w, self.variant, self.acc, self.flavor = cfg, weights, variant, accuracy_level, flavor
        self.g = Graph(f"llama-{variant}")

    # -- weights ---------------------------------------------------------------------------
    def _fused(self, names: list[str]) -> BlockWeight | np.ndarray:
        """Concatenate weights along their output rows so one matmul serves Q,K,V (or gate,up)."""
        parts = [self.w[n] for n in names]
        if isinstance(parts[0], np.ndarray):
            return np.concatenate(parts, axis=0)
        offsets = [p.offset for p in parts]
        return BlockWeight(
            q=np.concatenate([p.q for p in parts]),
            scale=np.concatenate([p.scale for p in parts]),
            offset=None if offsets[0] is None else np.concatenate(offsets),
            bits=parts[0].bits,
        )

    def linear(self, x: str, weight: BlockWeight | np.ndarray, name: str) -> str:
        g = self.g
        if self.variant == "fp32" or isinstance(weight, np.ndarray):
            w = weight.dequantize() if isinstance(weight, BlockWeight) else weight
            return g.op("MatMul", [x, g.init(f"{name}.wT", w.T)], name=name)
        n, blocks, _ = weight.q.shape
        k = blocks * QK
        if weight.bits == 8:  # Q8_0: int8 codes, symmetric; MatMulNBits' default zero point is 128
            codes, scale = weight.q.astype(np.int16) + 128, weight.scale
        else:  # Q4_1: w = d*q + m = d*(q - 8) + (m + 8d); MatMulNBits' default zero point is 8
            codes, scale = weight.q, weight.scale
        y = g.op("MatMulNBits", [x, g.init(f"{name}.qB", _pack_nbits(codes, weight.bits)),
                                 g.init(f"{name}.scales", scale.reshape(-1))],
                 domain=MS, name=name, K=k, N=n, bits=weight.bits, block_size=QK,
                 accuracy_level=self.acc)
        if weight.offset is None:
            return y
        # The exact correction: sum over each block of x times (m + 8d), as one small matmul.
        block_sums = g.op("ReduceSum", [g.op("Reshape", [x, g.const([0, 0, blocks, QK])]),
                                        g.const([-1])], keepdims=0)
        corr = weight.offset + 8.0 * weight.scale  # [N, blocks]
        return g.op("Add", [y, g.op("MatMul", [block_sums, g.init(f"{name}.corr", corr.T)])])

    # -- graph -----------------------------------------------------------------------------
    def attention(self, i: int, x: str, lens: tuple[str, str, str], cos: str, sin: str) -> str:
        g, c = self.g, self.cfg
        qkv = self.linear(x, self._fused([f"blk.{i}.attn_{p}.weight" for p in "qkv"]), f"l{i}.qkv")
        seqlens_k, total_len, query_lens = lens
        if query_lens:  # the extra zero query token (see the module docstring)
            qkv = g.op("Concat", [qkv, self.zero_token], axis=1)
        # One fused kernel: rotary, KV append, grouped-query causal attention over right-padded rows.
        inputs = [qkv, "", "", f"past_key.{i}", f"past_value.{i}", seqlens_k, total_len, cos, sin]
        if query_lens:
            inputs += [""] * 7 + [query_lens]
        ctx = g.op("GroupQueryAttention", inputs, n_out=3, domain=MS, name=f"l{i}.attn",
                   num_heads=c.n_heads, kv_num_heads=c.n_kv_heads, do_rotary=1, rotary_interleaved=1)
        g.nodes[-1].output[1] = f"present_key.{i}"
        g.nodes[-1].output[2] = f"present_value.{i}"
        out = ctx[0]
        if query_lens:
            out = g.op("Slice", [out, g.const([0]), g.const([-1]), g.const([1])])
        return self.linear(out, self.w[f"blk.{i}.attn_output.weight"], f"l{i}.o")

    def mlp(self, i: int, x: str) -> str:
        g = self.g
        gu = self.linear(x, self._fused([f"blk.{i}.ffn_gate.weight", f"blk.{i}.ffn_up.weight"]),
                         f"l{i}.gate_up")
        gate, up = g.op("Split", [gu, g.const([self.cfg.intermediate] * 2)], n_out=2, axis=-1)
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate])])  # SiLU
        return self.linear(g.op("Mul", [act, up]), self.w[f"blk.{i}.ffn_down.weight"], f"l{i}.down")

    def rms_norm(self, x: str, weight_name: str) -> str:
        g = self.g
        return g.op("SimplifiedLayerNormalization", [x, g.init(weight_name, self.w[weight_name])],
                    axis=-1, epsilon=self.cfg.rms_eps)

    def build(self) -> onnx.ModelProto:
        g, c = self.g, self.cfg
        kv, d = c.n_kv_heads, c.head_dim
        ids = g.input("input_ids", INT64, ["batch", "seq"])
        if self.flavor == "query_lens":
            # Attention sees each row's tokens plus the extra zero token: one more of everything.
            one = g.const(1, np.int32)
            lens = tuple(g.op("Add", [g.input(name, INT32, shape), one]) for name, shape in
                         (("seqlens_k", ["batch"]), ("total_seq_len", []), ("query_lens", ["batch"])))
            qkv_width = (c.n_heads + 2 * c.n_kv_heads) * d
            self.zero_token = g.op("ConstantOfShape", [g.op("Concat", [
                g.op("Shape", [ids], start=0, end=1), g.const([1, qkv_width])], axis=0)],
                value=onnx.helper.make_tensor("zero", FLOAT, [1], [0.0]))
        else:
            lens = (g.input("seqlens_k", INT32, ["batch"]), g.input("total_seq_len", INT32, []), "")
        logits_idx = g.input("logits_idx", INT64, ["batch", "n_logits", 1])
        for i in range(c.n_layers):
            g.input(f"past_key.{i}", FLOAT, ["batch", kv, "past", d])
            g.input(f"past_value.{i}", FLOAT, ["batch", kv, "past", d])
        inv_freq = c.rope_base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        angles = np.outer(np.arange(c.context_length), inv_freq)
        cos = g.init("rope.cos", np.cos(angles).astype(np.float32))
        sin = g.init("rope.sin", np.sin(angles).astype(np.float32))

        emb = self.w["token_embd.weight"]
        table = emb.dequantize() if isinstance(emb, BlockWeight) else emb
        # Tied embeddings: the one [V, hidden] table serves the lookup and (transposed) the head.
        table_name = g.init("token_embd", table)
        h = g.op("Gather", [table_name, ids], axis=0)
        for i in range(c.n_layers):
            h = g.op("Add", [h, self.attention(i, self.rms_norm(h, f"blk.{i}.attn_norm.weight"),
                                               lens, cos, sin)])
            h = g.op("Add", [h, self.mlp(i, self.rms_norm(h, f"blk.{i}.ffn_norm.weight"))])
        h = self.rms_norm(g.op("GatherND", [h, logits_idx], batch_dims=1), "output_norm.weight")
        head = self.w.get("output.weight", emb)
        if self.variant == "fp32" and head is emb:
            flat = g.op("Reshape", [h, g.const([-1, c.hidden])])
            logits = g.op("Gemm", [flat, table_name], transB=1)
            logits = g.op("Reshape", [logits, g.op("Concat", [
                g.op("Slice", [g.op("Shape", [h]), g.const([0]), g.const([2])]),
                g.const([-1])], axis=0)])
        else:
            logits = self.linear(h, head, "lm_head")
        g.output(logits, "logits", FLOAT, ["batch", "n_logits", c.vocab_size])
        for i in range(c.n_layers):
            g.outputs.append(onnx.helper.make_tensor_value_info(
                f"present_key.{i}", FLOAT, ["batch", kv, "total", d]))
            g.outputs.append(onnx.helper.make_tensor_value_info(
                f"present_value.{i}", FLOAT, ["batch", kv, "total", d]))
        return g.model()


def build_llama(cfg: LlamaConfig, weights: dict, variant: str, flavor: str | None = None) -> onnx.ModelProto:
    """flavor: default, what the installed ONNX Runtime runs (`gqa_flavor`)."""
    return LlamaBuilder(cfg, dict(weights), variant, flavor=flavor or gqa_flavor()).build()
