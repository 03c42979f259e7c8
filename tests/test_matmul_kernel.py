"""The project's int8 matmul (core/llm/kernels/matmul.c) against ONNX Runtime's MatMulNBits on
the same weights (the same arithmetic: int8 activations per block of 32), and its batch
invariance: a row's output bit-identical alone, in a batch of any size, on 1 or 2 threads, with
the pool spinning or not."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from core.llm.kernels import library_path
from core.quant.graph_edit import own_matmul

pytestmark = pytest.mark.skipif(library_path() is None, reason="no C compiler for the kernel")


def nbits_model(k: int, n: int, seed: int = 0, rank: int = 2) -> onnx.ModelProto:
    """One MatMulNBits (8 bits, block 32, int8 activations) with weights like a real layer's."""
    rng = np.random.default_rng(seed)
    blocks = k // 32
    weights = rng.integers(0, 256, (n, blocks, 32), dtype=np.uint8)
    scales = (rng.random((n, blocks)) * 0.01 + 1e-3).astype(np.float32)
    zero = rng.integers(96, 160, (n, blocks), dtype=np.uint8)
    node = helper.make_node("MatMulNBits", ["A", "W", "S", "Z"], ["Y"], name="mm", domain="com.microsoft",
                            K=k, N=n, bits=8, block_size=32, accuracy_level=4)
    dims = [None] * (rank - 1)
    graph = helper.make_graph(
        [node], "mm", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [*dims, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [*dims, n])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(scales, "S"),
         numpy_helper.from_array(zero, "Z")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


def session(model: onnx.ModelProto, threads: int = 2) -> ort.InferenceSession:
    os.environ["EFFSERVE_KERNEL_THREADS"] = str(threads)  # read when the library registers
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.register_custom_ops_library(str(library_path()))
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def activations(rows: int, k: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # channels of very different size, and a block of zeros (its scale is 0)
    a = rng.standard_normal((rows, k)).astype(np.float32) * np.exp(rng.standard_normal(k)).astype(np.float32)
    a[:, :32] = 0
    return a


@pytest.mark.parametrize(("k", "n"), [(64, 48), (96, 80), (576, 960), (1536, 32)])
def test_matches_matmulnbits(k, n):
    """Every row count (tiles of 4 rows and the rest) and column count (groups of 3 tiles and
    the rest) gives MatMulNBits' result up to float rounding."""
    model = nbits_model(k, n)
    theirs = session(model)
    edited = own_matmul(nbits_model(k, n))
    assert [node.op_type for node in edited.graph.node] == ["MatMulW8"]
    ours = session(edited)
    for rows in (1, 3, 4, 16, 33):
        a = activations(rows, k, seed=rows)
        want, got = theirs.run(None, {"A": a})[0], ours.run(None, {"A": a})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_a_row_is_the_same_alone_in_any_batch_and_on_any_threads():
    k, n = 576, 960
    a = activations(40, k)
    alone = session(own_matmul(nbits_model(k, n)), threads=1).run(None, {"A": a[:1]})[0][0]
    for threads in (1, 2):
        ours = session(own_matmul(nbits_model(k, n)), threads=threads)
        for rows in (1, 2, 5, 16, 40):
            assert np.array_equal(ours.run(None, {"A": a[:rows]})[0][0], alone), (threads, rows)
        # the same row in the middle of a batch, after other rows
        assert np.array_equal(ours.run(None, {"A": np.roll(a, 7, axis=0)})[0][7], alone)


def test_pool_spin_and_leading_dims():
    """pool_spin (set by own_matmul) changes when threads sleep, never a result; [B, S, K]
    inputs flatten to rows."""
    k, n = 96, 48
    spinning = own_matmul(nbits_model(k, n, rank=3))
    assert helper.get_attribute_value(spinning.graph.node[0].attribute[0]) == 1
    quiet = own_matmul(nbits_model(k, n, rank=3))
    del quiet.graph.node[0].attribute[:]
    a = activations(6, k).reshape(2, 3, k)
    outs = [session(m).run(None, {"A": a})[0] for m in (spinning, quiet)]
    assert outs[0].shape == (2, 3, n) and np.array_equal(outs[0], outs[1])
    flat = session(own_matmul(nbits_model(k, n))).run(None, {"A": a.reshape(6, k)})[0]
    assert np.array_equal(outs[0].reshape(6, n), flat)


def test_only_8_bit_block_32_int8_activation_nodes_change():
    model = nbits_model(64, 48)
    for attr in model.graph.node[0].attribute:
        if attr.name == "accuracy_level":
            attr.i = 0  # float activations: another arithmetic, keeps MatMulNBits
    assert [node.op_type for node in own_matmul(model).graph.node] == ["MatMulNBits"]


def test_a_cpu_without_the_vector_path_serves_the_variant_with_ort_matmuls(monkeypatch, caplog):
    import core.llm.kernels as kernels
    from deployments.models import runnable_variant

    assert runnable_variant("w8-fa16", "cpu") == "w8-fa16"
    monkeypatch.setattr(kernels, "matmul_vectorized", lambda: True)
    assert runnable_variant("w8-own", "cpu") == "w8-own"
    monkeypatch.setattr(kernels, "matmul_vectorized", lambda: False)
    assert runnable_variant("w8-own", "cpu") == "w8-fa16"
    assert "AVX-512 VNNI" in caplog.text
    assert runnable_variant("w8-own", "cuda") == "w8-own"  # the GPU runs none of these kernels
