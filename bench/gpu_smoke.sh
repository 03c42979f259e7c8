#!/usr/bin/env bash
# GPU smoke test, for a machine with an NVIDIA GPU (driver >= 580 for the CUDA 13 wheel), from the
# repository root: bench/gpu_smoke.sh [--no-install]
#   1. installs onnxruntime-gpu at pyproject.toml's version with its CUDA/cuDNN wheels
#      (`make install-gpu`; --no-install when done already, e.g. a machine without network)
#   2. placement: the GPU variant's session runs on CUDAExecutionProvider and ORT's verbose node
#      placement log puts no node on the CPU (fails otherwise)
#   3. decode tokens/s at batch 1 and 16: the graph with GPU-resident KV, and the engine
#   4. configs/gpu.yaml under `serve run` on this one GPU: 4 LLM replicas at 0.2 GPU each (+ the
#      embedder at 0.2) must be RUNNING with processes on the GPU; then a 1- and 16-stream load
# Results: bench/results/gpu_smoke_{placement,decode,serve}.json; table in docs/deploy.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT=${PORT:-8000}
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled ORT_DISABLE_TELEMETRY=1 ANONYMIZED_TELEMETRY=False

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
[[ "${1:-}" == "--no-install" ]] || make install-gpu
make models
# The CUDA/cuDNN libraries from pip live in site-packages/nvidia/*/lib (cluster.yaml does the same).
LD_LIBRARY_PATH="$(printf '%s:' "$PWD"/.venv/lib/python3.11/site-packages/nvidia/*/lib "$PWD"/.venv/lib/python3.11/site-packages/nvidia/*/*/lib)${LD_LIBRARY_PATH:-}"
export LD_LIBRARY_PATH
$BIN/python -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"

echo "== placement"
$BIN/python -m bench.gpu_smoke placement
echo "== decode"
$BIN/python -m bench.gpu_smoke decode

echo "== serve configs/gpu.yaml (4 LLM replicas on one GPU)"
$BIN/serve run configs/gpu.yaml > /tmp/gpu_smoke_serve.log 2>&1 &
SERVE_PID=$!
trap 'kill $SERVE_PID 2>/dev/null; $BIN/ray stop --force > /dev/null 2>&1 || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break
  kill -0 $SERVE_PID 2>/dev/null || { tail -50 /tmp/gpu_smoke_serve.log; exit 1; }
  sleep 1
done
$BIN/python - <<'EOF'
import json, subprocess, time
from ray import serve
for _ in range(300):  # replicas come up one after the other
    deployments = serve.status().applications["effserve"].deployments
    llm = deployments["LLMDeployment"]
    if llm.replica_states.get("RUNNING", 0) >= 4:
        break
    time.sleep(1)
running = llm.replica_states.get("RUNNING", 0)
pids = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                      capture_output=True, text=True, check=True).stdout.strip().splitlines()
print(f"LLM replicas RUNNING: {running}; processes on the GPU: {len(pids)}")
print("\n".join(pids))
assert running >= 4, f"{running} LLM replicas running, want 4 on one GPU"
assert len(pids) >= 5, "4 LLM replicas + the embedder should each hold the GPU"
json.dump({"llm_replicas_running": running, "gpu_processes": pids},
          open("bench/results/gpu_smoke_serve.json", "w"), indent=1)
EOF
$BIN/python -m bench.loadgen --url "http://127.0.0.1:$PORT" --concurrency 1 16 --requests 32 --max-tokens 64
echo "gpu smoke: OK"
