"""Build a sentence-embedding ONNX graph (BERT encoder + mean pooling + L2 norm) from safetensors.

inputs  input_ids [B,S] int64, attention_mask [B,S] int64
output  embeddings [B,H] float, unit length (cosine similarity is a dot product)
        token_embeddings [B,S,H] float, unit length per token (with token_outputs=True: the
        cache's second-stage scorer aligns the tokens of two prompts, core/cache/align.py)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from safetensors.numpy import load_file

from .graph import FLOAT, INT64, MS, Graph


def build_minilm(model_dir: str | Path, token_outputs: bool = False) -> onnx.ModelProto:
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    if cfg["model_type"] != "bert" or not pooling.get("pooling_mode_mean_tokens"):
        raise NotImplementedError(f"{model_dir}: only BERT with mean pooling is supported")
    w = load_file(str(model_dir / "model.safetensors"))
    hidden, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    g = Graph("sentence-embedder")

    def dense(x: str, prefix: str) -> str:
        y = g.op("MatMul", [x, g.init(f"{prefix}.wT", w[f"{prefix}.weight"].T)])
        return g.op("Add", [y, g.init(f"{prefix}.b", w[f"{prefix}.bias"])])

    def layer_norm(x: str, prefix: str) -> str:
        return g.op("LayerNormalization", [x, g.init(f"{prefix}.g", w[f"{prefix}.weight"]),
                                           g.init(f"{prefix}.beta", w[f"{prefix}.bias"])],
                    axis=-1, epsilon=eps)

    ids = g.input("input_ids", INT64, ["batch", "seq"])
    mask = g.input("attention_mask", INT64, ["batch", "seq"])
    # Every token has token type 0: fold that embedding into the position table.
    pos_table = w["embeddings.position_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
    seq_len = g.op("Slice", [g.op("Shape", [ids]), g.const([1]), g.const([2])])
    pos = g.op("Slice", [g.init("pos_type_emb", pos_table), g.const([0]), seq_len, g.const([0])])
    h = g.op("Add", [g.op("Gather", [g.init("word_emb", w["embeddings.word_embeddings.weight"]), ids]), pos])
    h = layer_norm(h, "embeddings.LayerNorm")
    mask32 = g.op("Cast", [mask], to=onnx.TensorProto.INT32)
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q, k, v = (dense(h, f"{p}.attention.self.{n}") for n in ("query", "key", "value"))
        ctx = g.op("MultiHeadAttention", [q, k, v, "", mask32], domain=MS, num_heads=heads)
        h = layer_norm(g.op("Add", [h, dense(ctx, f"{p}.attention.output.dense")]),
                       f"{p}.attention.output.LayerNorm")
        ff = g.op("Gelu", [dense(h, f"{p}.intermediate.dense")], domain=MS)
        h = layer_norm(g.op("Add", [h, dense(ff, f"{p}.output.dense")]), f"{p}.output.LayerNorm")
    # Mean over real tokens, then unit length.
    m = g.op("Unsqueeze", [g.op("Cast", [mask], to=FLOAT), g.const([-1])])
    summed = g.op("ReduceSum", [g.op("Mul", [h, m]), g.const([1])], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [m, g.const([1])], keepdims=0),
                         g.const([1e-9], np.float32)])
    mean = g.op("Div", [summed, count])
    norm = g.op("Max", [g.op("ReduceL2", [mean, g.const([-1])], keepdims=1),
                        g.const([1e-12], np.float32)])
    g.output(g.op("Div", [mean, norm]), "embeddings", FLOAT, ["batch", hidden])
    if token_outputs:
        token_norm = g.op("Max", [g.op("ReduceL2", [h, g.const([-1])], keepdims=1),
                                  g.const([1e-12], np.float32)])
        g.output(g.op("Div", [h, token_norm]), "token_embeddings", FLOAT, ["batch", "seq", hidden])
    return g.model()
