#!/usr/bin/env bash
# GPU smoke test, for a machine with an NVIDIA GPU (driver >= 580 for the CUDA 13 wheel), from the
# repository root: bench/gpu_smoke.sh [--no-install]
#   1. installs onnxruntime-gpu at pyproject.toml's version with its CUDA/cuDNN wheels
#      (`make install-gpu`; --no-install when done already, e.g. a machine without network).
#      A machine without network and without the venv: PY=python3 (an interpreter whose path
#      holds the project's dependencies, e.g. wheels unpacked on PYTHONPATH) and NVIDIA_SITE (the
#      site-packages whose nvidia/*/lib hold CUDA 13 and cuDNN 9); implies --no-install.
#   2. placement: the GPU variant's session runs on CUDAExecutionProvider and ORT's verbose node
#      placement log puts no node on the CPU (fails otherwise)
#   3. decode tokens/s at batch 1 and 16: the graph with GPU-resident KV, and the engine
#   4. configs/gpu.yaml under `serve run` on this one GPU: 4 LLM replicas at 0.2 GPU each (+ the
#      embedder at 0.2) must be RUNNING with processes on the GPU; then a 1- and 16-stream load
# Results: bench/results/gpu_smoke_{placement,decode,serve}.json; table in docs/deploy.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NVIDIA_SITE=${NVIDIA_SITE:-$PWD/.venv/lib/python3.11/site-packages}
PORT=${PORT:-8000}
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled ORT_DISABLE_TELEMETRY=1 ANONYMIZED_TELEMETRY=False

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [[ "$PY" == .venv/bin/python ]]; then
  [[ "${1:-}" == "--no-install" ]] || make install-gpu
  make models
fi
# The CUDA/cuDNN libraries from pip live in site-packages/nvidia/*/lib (cluster.yaml does the same).
LD_LIBRARY_PATH="$(printf '%s:' "$NVIDIA_SITE"/nvidia/*/lib "$NVIDIA_SITE"/nvidia/*/*/lib)${LD_LIBRARY_PATH:-}"
export LD_LIBRARY_PATH
$PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"

STEPS=" ${STEPS:-placement decode serve} "  # a subset, e.g. STEPS=serve, to repeat one step
if [[ "$STEPS" == *" placement "* ]]; then echo "== placement"; $PY -m bench.gpu_smoke placement; fi
if [[ "$STEPS" == *" decode "* ]]; then echo "== decode"; $PY -m bench.gpu_smoke decode; fi
[[ "$STEPS" == *" serve "* ]] || exit 0

echo "== serve configs/gpu.yaml (4 LLM replicas on one GPU), as cluster.yaml starts it"
# A cluster first (as cluster.yaml's head: ray start with the proxy refusal callback; the GPU counted
# explicitly, a sandbox may hide it from Ray's detection), then the app
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.proxy_refusal:middlewares
$PY -m ray.scripts.scripts start --head --num-gpus 1 --disable-usage-stats > /tmp/gpu_smoke_ray.log 2>&1
trap '$PY -m ray.scripts.scripts stop --force > /dev/null 2>&1 || true' EXIT
$PY -m ray.serve.scripts run --address auto configs/gpu.yaml > /tmp/gpu_smoke_serve.log 2>&1 &
SERVE_PID=$!
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break
  kill -0 $SERVE_PID 2>/dev/null || { tail -50 /tmp/gpu_smoke_serve.log; exit 1; }
  sleep 1
done
$PY - <<'EOF'
import json, subprocess, time
import ray
from ray import serve
ray.init(address="auto")
for _ in range(300):  # replicas come up one after the other
    deployments = serve.status().applications["effserve"].deployments
    llm = deployments["LLMDeployment"]
    if llm.replica_states.get("RUNNING", 0) >= 4:
        break
    time.sleep(1)
running = llm.replica_states.get("RUNNING", 0)
def smi(query: str) -> list[str]:
    return subprocess.run(["nvidia-smi", f"--query-{query}", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True, check=True).stdout.strip().splitlines()
pids = smi("compute-apps=pid,used_memory")
used_mib = int(smi("gpu=memory.used")[0])
print(f"LLM replicas RUNNING: {running}; processes on the GPU: {len(pids)}; GPU memory used: {used_mib} MiB")
print("\n".join(pids))
assert running >= 4, f"{running} LLM replicas running, want 4 on one GPU"
# Each replica holds a CUDA context, its weights and 1.4 GiB of KV slots (configs/gpu.yaml). A
# sandboxed machine may hide other processes from nvidia-smi; the memory they hold still shows.
assert len(pids) >= 5 or used_mib >= 4 * 1400, "4 LLM replicas + the embedder should each hold the GPU"
json.dump({"llm_replicas_running": running, "gpu_processes": pids, "gpu_memory_used_mib": used_mib,
           "deployments": {name: d.replica_states for name, d in deployments.items()}},
          open("bench/results/gpu_smoke_serve.json", "w"), indent=1)
EOF
$PY -m bench.loadgen --url "http://127.0.0.1:$PORT" --concurrency 1 16 64 --requests 64 --max-tokens 128 \
  --no-cache --name gpu_smoke_load
echo "gpu smoke: OK"
