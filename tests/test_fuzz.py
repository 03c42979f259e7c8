"""Fuzz the HTTP API from its own OpenAPI spec (schemathesis): no input may cause a 5xx."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration
MODELS = {"/v1/chat/completions": "smollm2-135m-instruct", "/v1/completions": "smollm2-135m-instruct",
          "/v1/embeddings": "all-minilm-l6-v2"}


@pytest.fixture(scope="module")
def api_schema(tight_url_for_fuzz):
    raw = httpx.get(f"{tight_url_for_fuzz}/openapi.json", timeout=30).json()
    config = schemathesis.Config.from_dict({"generation": {"mode": "all"}})
    schema = schemathesis.openapi.from_dict(raw, config=config)
    schema.config.base_url = tight_url_for_fuzz
    return schema


@pytest.fixture(scope="module")
def tight_url_for_fuzz(serve_url):
    """Small limits (max_seq_len 256), so valid generated requests finish fast."""
    from ray import serve

    from serve_app.app import build_app
    from tests.conftest import wait_healthy

    args = {"device": "cpu", "llm_variant": "q4", "llm_spinning": False, "llm_threads": 1,
            "engine": {"max_running": 4, "max_waiting": 8, "max_seq_len": 256},
            "cache": {"enabled": False}}
    serve.run(build_app(args), name="fuzz", route_prefix="/fuzz")
    url = f"{serve_url}/fuzz"
    wait_healthy(url)
    yield url
    serve.delete("fuzz")


def test_no_input_causes_a_server_error(api_schema):
    checked = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(), real_model=st.booleans())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case, real_model: bool) -> None:
            # Random model ids stop at the 404; half the cases name the served model so the
            # rest of the body reaches validation and the engine.
            if real_model and isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = MODELS.get(case.path, case.body["model"])
            response = case.call(timeout=60)
            assert response.status_code < 500 or response.status_code == 503, (
                case.method, case.path, case.body, response.status_code, response.text[:300])
            if response.status_code >= 400:
                assert "error" in response.json()

        no_server_error()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert {"POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings"} <= set(checked)
