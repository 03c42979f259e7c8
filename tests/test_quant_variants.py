"""Every named LM variant builds, loads and generates; the cache rebuilds only when its source changes.

The quantizers run on a tiny llama (2 layers, hidden 128) built the same way as the real one, from
random GGUF-style blocks, so all of them together take seconds; one real-model check makes sure a
derived variant answers like fp32.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from core.build.gguf_weights import QK, BlockWeight, LlamaConfig
from core.build.llama import build_llama
from core.llm.sampling import SamplingParams
from core.llm.textgen import TextGenerator
from core.quant.quality import LMReference
from core.quant.speed import load_runner
from core.quant.variants import SPECS, ensure_variant, variant_names

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def _q4_1(rng: np.random.Generator, rows: int, cols: int) -> BlockWeight:
    blocks = cols // QK
    return BlockWeight(rng.integers(0, 16, (rows, blocks, QK)).astype(np.uint8),
                       rng.uniform(0.005, 0.02, (rows, blocks)).astype(np.float32),
                       rng.uniform(-0.15, -0.05, (rows, blocks)).astype(np.float32), bits=4)


def _q8_0(rng: np.random.Generator, rows: int, cols: int) -> BlockWeight:
    return BlockWeight(rng.integers(-127, 128, (rows, cols // QK, QK)).astype(np.int8),
                       rng.uniform(0.0005, 0.002, (rows, cols // QK)).astype(np.float32), None, bits=8)


@pytest.fixture(scope="module")
def tiny_dir(llm_dir, tmp_path_factory) -> Path:
    """fp32.onnx + q4.onnx of a random 2-layer llama, with the real tokenizer and chat template."""
    out = tmp_path_factory.mktemp("tiny-llama")
    real = json.loads((llm_dir / "config.json").read_text())
    cfg = LlamaConfig(n_layers=2, hidden=128, intermediate=256, n_heads=4, n_kv_heads=2,
                      vocab_size=real["vocab_size"], context_length=512, rope_base=10000.0,
                      rms_eps=1e-5, bos_id=real["bos_id"], eos_id=real["eos_id"])
    rng = np.random.default_rng(0)
    kv, h, f = cfg.n_kv_heads * cfg.head_dim, cfg.hidden, cfg.intermediate
    w: dict = {"token_embd.weight": _q8_0(rng, cfg.vocab_size, h),
               "output_norm.weight": np.ones(h, np.float32)}
    for i in range(cfg.n_layers):
        for name, rows, cols in [("attn_q", h, h), ("attn_k", kv, h), ("attn_v", kv, h),
                                 ("attn_output", h, h), ("ffn_gate", f, h), ("ffn_up", f, h),
                                 ("ffn_down", h, f)]:
            w[f"blk.{i}.{name}.weight"] = _q4_1(rng, rows, cols)
        w[f"blk.{i}.attn_norm.weight"] = np.ones(h, np.float32)
        w[f"blk.{i}.ffn_norm.weight"] = np.ones(h, np.float32)
    for variant in ("fp32", "q4"):
        onnx.save(build_llama(cfg, w, variant), str(out / f"{variant}.onnx"))
    (out / "config.json").write_text(json.dumps(real | dataclasses.asdict(cfg)))
    shutil.copy(llm_dir / "tokenizer.json", out / "tokenizer.json")
    return out


@pytest.mark.parametrize("name", variant_names())
def test_each_variant_builds_loads_and_generates(tiny_dir, name):
    path = ensure_variant(tiny_dir, name, progress=False)
    assert path == tiny_dir / f"{name}.onnx" and path.exists()
    gen = TextGenerator(tiny_dir, variant=name, threads=2, device="cpu")
    ids = gen.chat.encode(gen.chat.chat_prompt(PROMPT))
    out = gen.complete(ids, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    assert out.n_tokens == 6 and out.finish_reason == "length"
    # ... and it really is the technique it is named after (sizes are checked on the real model
    # by bench/quantization.py: here the 49152-token head dominates the tiny model).
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    dtypes = {t.data_type for t in model.graph.initializer}
    expected = {"fp32": "MatMul", "int8-dyn": "DynamicQuantizeLinear",
                "int8-dyn-pc": "DynamicQuantizeLinear", "int8-qdq": "QuantizeLinear",
                "w8-fa": "Attention", "w8-fa16": "AttentionHalfKV", "w8-own": "MatMulW8"}
    if name == "fp16":
        assert onnx.TensorProto.FLOAT16 in dtypes and "MatMulNBits" not in ops
    else:
        assert expected.get(name, "MatMulNBits") in ops, ops


def test_lossless_q4_family_matches_fp32_on_tiny_model(tiny_dir):
    """q4-acc0 (fp32 activations in the 4-bit matmuls) stays next to fp32; KL/top-1 plumbing works."""
    ensure_variant(tiny_dir, "q4-acc0", progress=False)
    ref_runner = load_runner(tiny_dir, "fp32")
    chat = TextGenerator(tiny_dir, variant="fp32", threads=2).chat
    ref = LMReference.compute(ref_runner, chat, chunk_len=64, max_chunks=2, max_questions=3)
    same = ref.compare(ref_runner, chat)
    assert same["ppl_ratio"] == 1.0 and same["kl"] < 1e-6 and same["top1_agreement"] == 1.0
    assert same["greedy_agreement"] == 1.0
    q4 = ref.compare(load_runner(tiny_dir, "q4-acc0"), chat)
    assert abs(q4["ppl_ratio"] - 1) < 0.01 and q4["kl"] < 0.01


def test_cache_reuses_and_rebuilds_when_the_source_changes(tiny_dir):
    path = ensure_variant(tiny_dir, "int4-rtn128", progress=False)
    built = path.stat().st_mtime_ns
    assert ensure_variant(tiny_dir, "int4-rtn128", progress=False).stat().st_mtime_ns == built
    src = tiny_dir / "fp32.onnx"
    src.write_bytes(src.read_bytes())  # same model, new file: the stamp no longer matches
    assert ensure_variant(tiny_dir, "int4-rtn128", progress=False).stat().st_mtime_ns != built


def test_unknown_variant_is_a_value_error_naming_it(tiny_dir):
    with pytest.raises(ValueError, match="int3-magic"):
        ensure_variant(tiny_dir, "int3-magic")
    assert set(SPECS) >= {"fp32", "q4", "int4-rtn32", "int4-rtn128", "int8-qdq", "fp16"}


def test_real_model_derived_variant_answers_like_fp32(llm_dir):
    """The cheapest derived variant of the real model (seconds to build) keeps fp32's answer."""
    ensure_variant(llm_dir, "q4-acc0", progress=False)
    answers = {}
    for name in ("fp32", "q4-acc0"):
        gen = TextGenerator(llm_dir, variant=name, threads=2, device="cpu")
        ids = gen.chat.encode(gen.chat.chat_prompt(PROMPT))
        answers[name] = gen.complete(ids, SamplingParams(max_tokens=12, temperature=0)).text
    assert "Paris" in answers["fp32"] and "Paris" in answers["q4-acc0"]
