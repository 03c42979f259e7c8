"""Fixtures for the response-cache tests: a fake clock, vectors, a real chroma server."""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402


class FakeClock:
    """Wall clock for TTLs that tests move by hand instead of sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass
class ChromaServer:
    host: str
    port: int
    proc: subprocess.Popen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test paused it
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chroma_cli() -> str:
    local = Path(sys.executable).with_name("chroma")
    return str(local) if local.exists() else (shutil.which("chroma") or "chroma")


@contextmanager
def run_chroma(data: Path) -> Iterator[ChromaServer]:
    """`chroma run` on a free local port until the block exits."""
    data.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log_path = data / "chroma.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [_chroma_cli(), "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = ChromaServer("127.0.0.1", port, proc)
        try:
            _wait_until_up(server, log_path)
            yield server
        finally:
            server.stop()


def _wait_until_up(server: ChromaServer, log_path: Path, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"chroma run exited: {log_path.read_text()[-2000:]}")
        try:
            url = f"http://{server.host}:{server.port}/api/v2/heartbeat"
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"chroma run did not answer within {limit_s:.0f} s")
        time.sleep(0.05)


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[ChromaServer]:
    """A server of its own, for tests that stop or pause it."""
    with run_chroma(tmp_path / "chroma") as server:
        yield server


@pytest.fixture(scope="module")
def shared_chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """One server for the tests that leave it running (each cleans up after itself)."""
    with run_chroma(tmp_path_factory.mktemp("chroma")) as server:
        yield server
