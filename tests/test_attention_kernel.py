"""The project's attention kernel (core/llm/kernels/attention.c) against a numpy reference, and
its batch invariance at the kernel level: a row's output bit-identical alone or in a batch, and
a multi-token step identical to decoding the same tokens one at a time."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from core.llm.kernels import library_path

H, KV, D, MAXPOS = 9, 3, 64, 64
W = (H + 2 * KV) * D
pytestmark = pytest.mark.skipif(library_path() is None, reason="no C compiler for the kernel")


def tables() -> tuple[np.ndarray, np.ndarray]:
    angles = np.outer(np.arange(MAXPOS), 10000.0 ** (-np.arange(0, D, 2) / D))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def session(half: bool, query_lens: bool = True) -> ort.InferenceSession:
    kv_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    cos, sin = tables()
    inputs = [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, ["B", "S", W]),
              helper.make_tensor_value_info("past_key", kv_type, ["B", KV, "P", D]),
              helper.make_tensor_value_info("past_value", kv_type, ["B", KV, "P", D]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["B"]),
              helper.make_tensor_value_info("total_seq_len", TensorProto.INT32, [])]
    inputs += [helper.make_tensor_value_info("query_lens", TensorProto.INT32, ["B"])] if query_lens else []
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("present_key", kv_type, None),
               helper.make_tensor_value_info("present_value", kv_type, None)]
    node = helper.make_node("AttentionHalfKV" if half else "Attention",
                            ["qkv", "past_key", "past_value", "seqlens_k", "total_seq_len", "cos", "sin",
                             "query_lens"][:8 if query_lens else 7], ["out", "present_key", "present_value"],
                            domain="effserve")
    graph = helper.make_graph([node], "attention", inputs, outputs,
                              [helper.make_tensor("cos", TensorProto.FLOAT, cos.shape, cos.ravel()),
                               helper.make_tensor("sin", TensorProto.FLOAT, sin.shape, sin.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("effserve", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.register_custom_ops_library(str(library_path()))
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def rotate(x: np.ndarray, pos: int) -> np.ndarray:
    cos, sin = tables()
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos[pos] - b * sin[pos]
    out[..., 1::2] = a * sin[pos] + b * cos[pos]
    return out


def reference(qkv, keys, values, past, n, half):
    """One row: new tokens' outputs [n, H*D] and the row's keys/values after the append."""
    keys, values = keys.astype(np.float64).copy(), values.astype(np.float64).copy()
    out = np.zeros((n, H * D))
    for s in range(n):
        tok = qkv[s].astype(np.float64)
        k_new = rotate(tok[H * D:(H + KV) * D].reshape(KV, D), past + s)
        v_new = tok[(H + KV) * D:].reshape(KV, D)
        if half:
            k_new, v_new = k_new.astype(np.float16), v_new.astype(np.float16)
        keys[:, past + s], values[:, past + s] = k_new, v_new
    for s in range(n):
        q = rotate(qkv[s, :H * D].astype(np.float64).reshape(H, D), past + s) / np.sqrt(D)
        for h in range(H):
            k, v = keys[h // (H // KV), :past + s + 1], values[h // (H // KV), :past + s + 1]
            p = np.exp(k @ q[h] - (k @ q[h]).max())
            out[s, h * D:(h + 1) * D] = (p / p.sum()) @ v
    return out, keys, values


def run_bound(sess, qkv, keys, values, lens, query_lens):
    """Run with the KV buffers bound in place (as the engine does); returns the output."""
    total = lens + query_lens
    bind = sess.io_binding()
    bind.bind_cpu_input("qkv", np.ascontiguousarray(qkv, np.float32))
    bind.bind_cpu_input("seqlens_k", np.maximum(total - 1, 0).astype(np.int32))
    bind.bind_cpu_input("total_seq_len", np.array(max(int(total.max()), 1), np.int32))
    if any(i.name == "query_lens" for i in sess.get_inputs()):
        bind.bind_cpu_input("query_lens", query_lens.astype(np.int32))
    bind.bind_output("out")
    for name, buf in (("key", keys), ("value", values)):
        value = ort.OrtValue.ortvalue_from_numpy(buf)
        bind.bind_ortvalue_input(f"past_{name}", value)
        bind.bind_ortvalue_output(f"present_{name}", value)
    sess.run_with_iobinding(bind)
    return bind.copy_outputs_to_cpu()[0]


@pytest.mark.parametrize("half", [False, True])
def test_matches_the_reference_and_appends_in_place(half):
    rng = np.random.default_rng(0)
    dtype = np.float16 if half else np.float32
    lens, query_lens, cap = np.array([5, 0, 7]), np.array([4, 1, 0]), 16
    qkv = rng.standard_normal((3, 4, W)).astype(np.float32)
    keys = rng.standard_normal((3, KV, cap, D)).astype(dtype)
    values = rng.standard_normal((3, KV, cap, D)).astype(dtype)
    before_k, before_v = keys.copy(), values.copy()
    out = run_bound(session(half), qkv, keys, values, lens, query_lens)
    for b in range(3):
        n, past = int(query_lens[b]), int(lens[b])
        want, want_k, want_v = reference(qkv[b], before_k[b], before_v[b], past, n, half)
        np.testing.assert_allclose(out[b, :n], want, atol=2e-4 if not half else 1e-3, rtol=1e-3)
        assert not out[b, n:].any()  # padding positions are zero
        np.testing.assert_allclose(keys[b].astype(np.float64), want_k, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(values[b].astype(np.float64), want_v, atol=1e-6)
        # nothing outside the appended positions moved
        assert (keys[b][:, past + n:] == before_k[b][:, past + n:]).all()


@pytest.mark.parametrize("half", [False, True])
def test_a_row_is_bit_identical_alone_in_a_batch_and_token_by_token(half):
    rng = np.random.default_rng(1)
    dtype = np.float16 if half else np.float32
    sess = session(half)
    cap, past = 40, 9
    prefix_k = rng.standard_normal((1, KV, cap, D)).astype(dtype)
    prefix_v = rng.standard_normal((1, KV, cap, D)).astype(dtype)
    tokens = rng.standard_normal((1, 5, W)).astype(np.float32)
    # alone, 5 query tokens in one step (speculative verification)
    k1, v1 = prefix_k.copy(), prefix_v.copy()
    together = run_bound(sess, tokens, k1, v1, np.array([past]), np.array([5]))
    # one token at a time
    k2, v2 = prefix_k.copy(), prefix_v.copy()
    steps = [run_bound(sess, tokens[:, s:s + 1], k2, v2, np.array([past + s]), np.array([1]))[0, 0]
             for s in range(5)]
    assert np.array_equal(together[0], np.stack(steps))
    assert np.array_equal(k1, k2) and np.array_equal(v1, v2)
    # as row 2 of a batch of 6 other rows of other lengths and widths
    others = rng.standard_normal((6, KV, cap, D)).astype(dtype)
    keys, values = others.copy(), others.copy()
    keys[2], values[2] = prefix_k[0], prefix_v[0]
    batch_tokens = rng.standard_normal((6, 7, W)).astype(np.float32)
    batch_tokens[2, :5] = tokens[0]
    lens, query_lens = np.array([3, 20, past, 0, 31, 1]), np.array([7, 1, 5, 2, 1, 0])
    in_batch = run_bound(sess, batch_tokens, keys, values, lens, query_lens)
    assert np.array_equal(in_batch[2, :5], together[0])


def test_without_binding_present_holds_past_then_the_new_tokens():
    rng = np.random.default_rng(2)
    past = rng.standard_normal((2, KV, 3, D)).astype(np.float32)
    qkv = rng.standard_normal((2, 2, W)).astype(np.float32)
    lens, query_lens = np.array([3, 2]), np.array([2, 1])
    total = lens + query_lens
    out, present_k, _ = session(False).run(None, {
        "qkv": qkv, "past_key": past, "past_value": past,
        "seqlens_k": (total - 1).astype(np.int32), "total_seq_len": np.array(total.max(), np.int32),
        "query_lens": query_lens.astype(np.int32)})
    assert present_k.shape == (2, KV, 5, D)
    assert np.array_equal(present_k[0, :, :3], past[0])
    assert np.array_equal(present_k[1, :, :2], past[1, :, :2])
    assert not present_k[1, :, 3:].any()  # after row 1's 2 + 1 tokens: zeros
    want, want_k, _ = reference(qkv[0], np.concatenate([past[0], np.zeros((KV, 2, D))], 1),
                                np.concatenate([past[0], np.zeros((KV, 2, D))], 1), 3, 2, False)
    np.testing.assert_allclose(out[0], want, atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(present_k[0], want_k, atol=1e-5, rtol=1e-5)


def test_without_query_lens_every_row_takes_all_new_tokens():
    """The "padded" graph flavor (ONNX Runtime 1.31): no query_lens input, seqlens_k counts the
    padding; the valid tokens' outputs are those of the query_lens flavor, bit for bit."""
    rng = np.random.default_rng(3)
    cap, lens, width = 24, np.array([4, 9]), 3
    qkv = rng.standard_normal((2, width, W)).astype(np.float32)
    keys = rng.standard_normal((2, KV, cap, D)).astype(np.float32)
    values = rng.standard_normal((2, KV, cap, D)).astype(np.float32)
    k1, v1, k2, v2 = keys.copy(), values.copy(), keys.copy(), values.copy()
    padded = run_bound(session(False, query_lens=False), qkv, k1, v1, lens, np.full(2, width))
    exact = run_bound(session(False), qkv, k2, v2, lens, np.array([width, 2]))
    assert np.array_equal(padded[0], exact[0]) and np.array_equal(padded[1, :2], exact[1, :2])
    assert np.array_equal(k1[1, :, :lens[1] + 2], k2[1, :, :lens[1] + 2])
    assert not np.array_equal(k1[1, :, lens[1] + 2], k2[1, :, lens[1] + 2])  # padding appended too


POOL_SCRIPT = """
import gc, os, sys
import numpy as np
from tests.test_attention_kernel import KV, D, W, run_bound, session
rng = np.random.default_rng(0)

def step(i):
    sess = session(i % 2 == 1)
    dtype = np.float16 if i % 2 else np.float32
    keys = rng.standard_normal((16, KV, 300, D)).astype(dtype)
    run_bound(sess, rng.standard_normal((16, 1, W)).astype(np.float32), keys, keys.copy(),
              np.full(16, 250), np.ones(16, np.int64))

for i in range(6):  # sessions come and go: the library and its sleeping workers stay
    step(i)
    gc.collect()
assert any("libeffattn" in line for line in open("/proc/self/maps"))
pid = os.fork()
if pid == 0:  # a forked child has no workers: the pool starts over
    step(0)
    os._exit(0)
assert os.waitpid(pid, 0)[1] == 0
step(1)
print("ok")
"""


def test_the_thread_pool_survives_sessions_and_forks():
    """ONNX Runtime unloads a custom-op library with its last session (the library is linked
    -z nodelete so the pool's sleeping workers keep their code), and a forked child must not wait
    for workers it does not have: either would hang a run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "EFFSERVE_KERNEL_THREADS": "2",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", POOL_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
