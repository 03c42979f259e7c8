"""GPU smoke checks behind bench/gpu_smoke.sh (a machine with an NVIDIA GPU, `make install-gpu`).

    python -m bench.gpu_smoke placement     # every node of the GPU variant on CUDAExecutionProvider
    python -m bench.gpu_smoke decode        # decode tokens/s at batch 1 and 16

placement: the session is created with ONNX Runtime's verbose log, whose "Node placements" lines
say which provider got each node after the CUDA EP's own graph optimizations; any node on
CPUExecutionProvider fails the check (it would run there, with copies around it).

decode: two figures per batch size. "graph": the graph alone with its KV resident on the GPU
(OrtValues bound in place), what the GPU can do. "engine": the serving engine (continuous
batching, ModelRunner.forward_slots), whose KV slots live in host memory, so each step copies
the slot range's KV to the GPU and back; the gap between the two is what device-resident KV
slots would win.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANT = "q4-fp16"


@contextlib.contextmanager
def stderr_to(path: str):
    """ORT's C++ logger writes to fd 2: redirect the descriptor itself, not sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def placements(log: str) -> dict[str, int]:
    """provider -> nodes placed on it, from the verbose "Node placements" block of a session:
    "All nodes placed on [X]. Number of nodes: N" or one "Node(s) placed on [X]. Number of
    nodes: N" line per provider (the node names follow in the log)."""
    return {provider: int(n) for provider, n in
            re.findall(r"placed on \[(\w+)\]\.\s+Number of nodes: (\d+)", log)}


def model_path() -> Path:
    """The GPU variant, built here; or, on a machine that cannot build it (no network, no GGUF),
    a prebuilt copy named by GPU_SMOKE_MODEL (its folder holds config.json and tokenizer.json)."""
    if prebuilt := os.environ.get("GPU_SMOKE_MODEL"):
        return Path(prebuilt)
    from core.build.artifacts import build_llm
    from core.quant.variants import ensure_variant

    return ensure_variant(build_llm(progress=print), VARIANT)


def check_placement() -> dict:
    import onnxruntime as ort

    path = model_path()
    opts = ort.SessionOptions()
    opts.log_severity_level = 0  # verbose: the node placement lines
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    log = tempfile.NamedTemporaryFile(suffix=".log", delete=False).name
    with stderr_to(log):
        session = ort.InferenceSession(str(path), opts,
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    placed = placements(Path(log).read_text())
    result = {"providers": session.get_providers(), "placements": placed, "log": log}
    assert session.get_providers()[0] == "CUDAExecutionProvider", result
    assert placed, f"no node placement lines in {log}"
    assert not placed.get("CPUExecutionProvider"), f"nodes on the CPU (names in {log}): {placed}"
    return result


def graph_decode_tok_s(batch: int, steps: int = 64, capacity: int = 1024) -> float:
    """Decode steps of the graph alone, KV resident on the GPU and updated in place."""
    import onnxruntime as ort

    from core.llm.session import make_session

    cfg = json.loads((model_path().parent / "config.json").read_text())
    layers, kv_heads, head_dim = cfg["n_layers"], cfg["n_kv_heads"], cfg["hidden"] // cfg["n_heads"]
    session = make_session(str(model_path()), threads=1, device="cuda")
    shape = (batch, kv_heads, capacity, head_dim)
    kv = [ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float16, "cuda", 0)
          for _ in range(2 * layers)]
    prompt = 16

    def step(ids: np.ndarray, past: int) -> None:
        bind = session.io_binding()
        s = ids.shape[1]
        bind.bind_cpu_input("input_ids", ids.astype(np.int64))
        bind.bind_cpu_input("seqlens_k", np.full(batch, past + s - 1, np.int32))
        bind.bind_cpu_input("total_seq_len", np.array(past + s, np.int32))
        bind.bind_cpu_input("logits_idx", np.full((batch, 1, 1), s - 1, np.int64))
        for i in range(layers):
            for j, kind in enumerate(("key", "value")):
                bind.bind_ortvalue_input(f"past_{kind}.{i}", kv[2 * i + j])
                bind.bind_ortvalue_output(f"present_{kind}.{i}", kv[2 * i + j])
        bind.bind_output("logits")
        session.run_with_iobinding(bind)
        bind.get_outputs()[-1].numpy()  # the logits reach the host, as sampling needs them

    step(np.random.default_rng(0).integers(100, 40000, (batch, prompt)), 0)
    times = []
    for n in range(steps):
        start = time.perf_counter()
        step(np.full((batch, 1), 42), prompt + n)
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times[8:]))


def engine_decode(gen, batch: int, prefix_cache_bytes: int = 0,
                  max_tokens: int = 64) -> tuple[float, list[str]]:
    """tokens/s of the serving engine over `batch` prompts at once, and its greedy outputs."""
    from core.llm.engine import EngineConfig, LLMEngine
    from core.llm.sampling import SamplingParams

    engine = LLMEngine(gen.runner, gen.chat, EngineConfig(max_running=batch, max_seq_len=1024,
                                                          prefix_cache_bytes=prefix_cache_bytes))
    prompts = [gen.chat.encode(f"Write a long story about the number {i}. It should have a beginning, "
                               "a middle and an end, and characters the reader cares about.")
               for i in range(batch)]  # ~30 tokens: whole 16-token blocks for the prefix cache
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    engine.generate(prompts[:1], SamplingParams(max_tokens=4, temperature=0))  # warm up
    start = time.perf_counter()
    outs = engine.generate(prompts, params)
    tok_s = sum(o.n_tokens for o in outs) / (time.perf_counter() - start)
    if prefix_cache_bytes:  # again: now every prompt's KV comes back from the prefix cache
        outs = engine.generate(prompts, params)
        assert engine.prefix_cache.stats.hit_tokens > 0
    return tok_s, [o.text for o in outs]


def decode_figures() -> dict:
    from core.llm.textgen import TextGenerator

    gen = TextGenerator(model_path().parent, variant=model_path().stem, threads=1, device="cuda")
    result: dict = {}
    for b in (1, 16):
        result[f"graph_b{b}_tok_s"] = round(graph_decode_tok_s(b), 1)
        result[f"engine_b{b}_tok_s"] = round(engine_decode(gen, b)[0], 1)
    # Greedy outputs of 16 prompts: the same run twice (is the GPU deterministic here?), and with
    # KV restored from the prefix cache (the rest of the prompt then prefills row by row: other
    # kernel shapes, whose float16 rounding may flip a near-tie)
    _, first = engine_decode(gen, 16)
    _, again = engine_decode(gen, 16)
    _, restored = engine_decode(gen, 16, prefix_cache_bytes=64 << 20)

    def same(a: list[str], b: list[str]) -> str:
        return f"{sum(x == y for x, y in zip(a, b, strict=True))}/{len(a)}"

    return result | {"identical_run_twice": same(first, again),
                     "identical_prefix_cache": same(restored, first),
                     "first_output": first[0][:120]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("check", choices=["placement", "decode"])
    ap.add_argument("--out", default="bench/results/gpu_smoke_{check}.json")
    args = ap.parse_args(argv)
    if args.check == "placement":
        result = check_placement()
    else:
        result = decode_figures()
    import onnxruntime as ort

    result |= {"variant": VARIANT, "onnxruntime": ort.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(args.out.format(check=args.check))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
