"""Speed and cost of LM variants, side by side in one process and interleaved round by round, so a
busy neighbour on this 2-core machine slows every variant alike and the ratios stay honest.
Contention only ever adds time, so each decode figure is the median step of a round and the
reported value the best round (prefill: the fastest round).

  prefill_ms_128   one prefill of 128 tokens from an empty cache
  decode_tok_s_b1  greedy-style decode steps of one row after a 16-token prompt
  decode_tok_s_b8  decode steps of 8 right-padded rows (prompts of 9..16 tokens), tokens/s in total
  peak_rss_mb      peak resident memory of a fresh process that loads the variant and runs both
                   (`python -m core.quant.speed --rss MODEL_DIR NAME`), so variants do not mix
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..llm.model_runner import ModelRunner


def load_runner(model_dir: Path, name: str, threads: int = 2, spinning: bool = False) -> ModelRunner:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return ModelRunner(str(Path(model_dir) / f"{name}.onnx"), cfg["n_layers"], cfg["n_kv_heads"],
                       cfg["hidden"] // cfg["n_heads"], threads, spinning, device="cpu")


def _prompts(batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    lens = np.array([16 - (i % 8) for i in range(batch)]) if batch > 1 else np.array([16])
    return rng.integers(100, 40000, (batch, int(lens.max()))), lens


def prefill_s(runner: ModelRunner, n: int = 128) -> float:
    ids = np.random.default_rng(0).integers(100, 40000, (1, n))
    start = time.perf_counter()
    runner.forward(ids, [n], runner.empty_kv(), np.array([[n - 1]]))
    return time.perf_counter() - start


def decode_tok_s(runner: ModelRunner, batch: int, steps: int) -> float:
    ids, lens = _prompts(batch, np.random.default_rng(1))
    _, kv = runner.forward(ids, lens, runner.empty_kv(batch), (lens - 1)[:, None])
    token, ones, zero = np.full((batch, 1), 42), np.ones(batch), np.zeros((batch, 1))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        _, kv = runner.forward(token, ones, kv, zero)
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def measure_speed(runners: dict[str, ModelRunner], repeats: int = 3, decode_steps: int = 32,
                  progress: bool = True) -> dict[str, dict]:
    """Best of `repeats` rounds; each round visits every variant once (after one warm-up round)."""
    from tqdm import tqdm

    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runners}
    rounds = tqdm(range(repeats + 1), desc="speed rounds", disable=not progress, leave=False)
    for r in rounds:
        for name, runner in runners.items():
            rounds.set_postfix_str(name)
            sample = (prefill_s(runner), decode_tok_s(runner, 1, decode_steps),
                      decode_tok_s(runner, 8, decode_steps // 2))
            if r:  # round 0 warms caches and lets ORT allocate its arenas
                samples[name].append(sample)
    out = {}
    for name, rows in samples.items():
        pre, b1, b8 = (f(col) for f, col in zip((min, max, max), zip(*rows, strict=True), strict=True))
        out[name] = {"prefill_ms_128": round(pre * 1000, 1), "decode_tok_s_b1": round(b1, 1),
                     "decode_ms_per_token": round(1000 / b1, 2), "decode_tok_s_b8": round(b8, 1)}
    return out


def peak_rss_mb(model_dir: Path, name: str, threads: int = 2) -> float:
    cmd = [sys.executable, "-m", "core.quant.speed", "--rss", str(model_dir), name, str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_rss_mb"])


def _rss_child(model_dir: str, name: str, threads: int) -> None:
    runner = load_runner(Path(model_dir), name, threads)
    prefill_s(runner)
    decode_tok_s(runner, 8, 4)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child of a
    # big parent would report the parent's peak.
    hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"peak_rss_mb": round(hwm_kb / 1024, 1)}))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--rss":
        _rss_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit("usage: python -m core.quant.speed --rss MODEL_DIR VARIANT THREADS")
