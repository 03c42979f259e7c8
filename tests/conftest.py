"""Shared fixtures: built models, the real engine, and one Ray Serve app per test session."""

from __future__ import annotations

import os

for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                   "ORT_DISABLE_TELEMETRY": "1", "ANONYMIZED_TELEMETRY": "False",
                   "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from bench.common import wait_until_ok  # noqa: E402
from core.build.artifacts import build_embedder, build_llm  # noqa: E402
from serve_app.proxy_refusal import CALLBACK, CALLBACK_ENV  # noqa: E402

# as `make serve`: Serve's proxy makes the early refusal (its workers inherit this from
# ray.init); apps with proxy_refusal: false keep the Ingress' own
os.environ.setdefault(CALLBACK_ENV, CALLBACK)

SERVE_PORT = int(os.environ.get("TEST_SERVE_PORT", "8765"))


@pytest.fixture(scope="session")
def llm_dir() -> Path:
    return build_llm(progress=lambda _: None)


@pytest.fixture(scope="session")
def embedder_dir() -> Path:
    return build_embedder(progress=lambda _: None)


@pytest.fixture(scope="session")
def generator(llm_dir):
    from core.llm.textgen import TextGenerator

    return TextGenerator(llm_dir, variant="q4", threads=2)


@pytest.fixture(scope="session")
def fp32_generator(llm_dir):
    from core.llm.textgen import TextGenerator

    return TextGenerator(llm_dir, variant="fp32", threads=2)


@pytest.fixture(scope="session")
def embedder(embedder_dir):
    from core.embedder import Embedder

    return Embedder(embedder_dir, threads=2)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (ray.init costs ~10 s)."""
    import ray

    # Logical CPUs: the test apps (two of them at times) oversubscribe this 2-core machine on purpose.
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def wait_healthy(url: str, timeout_s: float = 120) -> None:
    wait_until_ok(f"{url}/healthz", timeout_s)


@pytest.fixture(scope="session")
def serve_url(ray_session, llm_dir, embedder_dir, tmp_path_factory) -> str:
    """The real app (configs/local.yaml's graph) running in Ray Serve, reachable over HTTP."""
    from ray import serve

    from serve_app.app import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
    cache_dir = str(tmp_path_factory.mktemp("chroma"))
    serve.run(build_app({"device": "cpu", "llm_variant": "q4", "llm_spinning": False,
                         "cache": {"data_dir": cache_dir}}),
              name="effserve", route_prefix="/")
    url = f"http://127.0.0.1:{SERVE_PORT}"
    wait_healthy(url)
    yield url
    serve.shutdown()
