"""Calibration inputs for static quantization: real text through the LM's own graph interface.

The LM graph takes input_ids, seqlens_k, total_seq_len, logits_idx, per-layer past_key/past_value
and, in its "query_lens" flavor, query_lens (see core/build/llama.py); a prefill from an empty
cache is what the calibrator needs to see, so each sample is one chunk of data/calibration.txt
with empty KV tensors.
The text is not the held-out text that quality is measured on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader
from tokenizers import Tokenizer

DATA = Path(__file__).parent / "data"


def lm_feed(ids: list[int], n_layers: int, n_kv_heads: int, head_dim: int,
            query_lens: bool) -> dict[str, np.ndarray]:
    """Inputs of one prefill of `ids` from an empty cache, scoring the last position (batch 1)."""
    n = len(ids)
    feed = {"input_ids": np.array([ids], np.int64), "seqlens_k": np.array([n - 1], np.int32),
            "total_seq_len": np.array(n, np.int32), "logits_idx": np.array([[[n - 1]]], np.int64)}
    if query_lens:
        feed["query_lens"] = np.array([n], np.int32)
    empty = np.zeros((1, n_kv_heads, 0, head_dim), np.float32)
    for i in range(n_layers):
        feed[f"past_key.{i}"] = feed[f"past_value.{i}"] = empty
    return feed


def token_chunks(tokens: list[int], length: int, limit: int | None = None) -> list[list[int]]:
    """Consecutive non-overlapping chunks of `length` tokens (the tail shorter than 16 is dropped)."""
    chunks = [tokens[i:i + length] for i in range(0, len(tokens), length)]
    return [c for c in chunks if len(c) >= 16][:limit]


class LMCalibrationReader(CalibrationDataReader):
    """`samples` chunks of `seq_len` tokens of data/calibration.txt, as LM prefill feeds."""

    def __init__(self, model: Path, samples: int = 8, seq_len: int = 128) -> None:
        """model: the graph to calibrate (its inputs say which flavor it is)."""
        model_dir = Path(model).parent
        inputs = {i.name for i in onnx.load(str(model), load_external_data=False).graph.input}
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        ids = tok.encode((DATA / "calibration.txt").read_text(), add_special_tokens=False).ids
        dims = (cfg["n_layers"], cfg["n_kv_heads"], cfg["hidden"] // cfg["n_heads"])
        self._feeds = [lm_feed(c, *dims, "query_lens" in inputs) for c in token_chunks(ids, seq_len, samples)]
        self._next = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def get_next(self) -> dict | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self._feeds)


def kv_absmax(model: Path, samples: int = 16, seq_len: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Per layer and channel ([layers, kv_heads * head_dim]), the largest |key| and |value| the
    graph writes to its KV cache (keys after rotary) over `samples` chunks of calibration text."""
    from core.llm.textgen import TextGenerator

    gen = TextGenerator(Path(model).parent, variant=Path(model).stem)
    runner, layers = gen.runner, gen.runner.n_layers
    ids = gen.chat.tokenizer.encode((DATA / "calibration.txt").read_text(), add_special_tokens=False).ids
    k_max = np.zeros((layers, runner.n_kv_heads * runner.head_dim), np.float32)
    v_max = np.zeros_like(k_max)
    for chunk in token_chunks(ids, seq_len, samples):
        slots = runner.make_slots(1, seq_len)
        runner.forward_slots(slots, 0, 1, np.array([chunk]), np.array([len(chunk)]),
                             np.array([[len(chunk) - 1]]))
        for i in range(layers):  # [kv_heads, n, head_dim] -> per channel
            k_max[i] = np.maximum(k_max[i], np.abs(slots.keys[i][0, :, :len(chunk)]).max(axis=1).ravel())
            v_max[i] = np.maximum(v_max[i], np.abs(slots.values[i][0, :, :len(chunk)]).max(axis=1).ravel())
    return k_max, v_max
