"""configs/gpu.yaml's app, with its GPU variant, answers the official OpenAI client.

No GPU here: the same args with `device: cpu`, so every graph runs on the CPU provider of
whichever onnxruntime wheel is installed (in CI's second pass, onnxruntime-gpu's). The float16
graph has CPU kernels in ONNX Runtime 1.31 (GroupQueryAttention, MatMulNBits,
SimplifiedLayerNormalization): the CPU fallback is the same graph, no other variant.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from openai import OpenAI

from tests.conftest import wait_healthy

pytestmark = pytest.mark.integration
CHAT = "smollm2-135m-instruct"
GPU_CONFIG = Path(__file__).parents[1] / "configs" / "gpu.yaml"
QUESTION = "What is the capital of France? Answer in one sentence."


def gpu_args() -> dict:
    (app,) = yaml.safe_load(GPU_CONFIG.read_text())["applications"]
    return app["args"]


@pytest.fixture(scope="module")
def gpu_app_url(serve_url):
    from ray import serve

    from serve_app.app import build_graph

    args = gpu_args() | {"device": "cpu", "cache": {"enabled": False}}
    # 4 slots instead of 32: the KV of 32 x 2048 tokens would be made resident for nothing here.
    args["engine"] = args["engine"] | {"max_running": 4}
    serve.run(build_graph(args, llm_options={"ray_actor_options": {"num_cpus": 0.5}},
                          embedder_options={"ray_actor_options": {"num_cpus": 0.25}}),
              name="gpu", route_prefix="/gpu")
    url = f"{serve_url}/gpu"
    wait_healthy(url, timeout_s=300)  # the float16 variant is built on first use
    yield url
    serve.delete("gpu")


def test_gpu_config_serves_a_float16_gpu_variant():
    from core.quant.variants import spec

    variant = spec(gpu_args()["llm_variant"])
    assert variant.device == "gpu" and gpu_args()["device"] == "cuda"


def test_the_gpu_variant_answers_the_openai_client_like_the_engine_alone(gpu_app_url, llm_dir):
    from core.llm.sampling import SamplingParams
    from core.llm.textgen import TextGenerator

    client = OpenAI(base_url=f"{gpu_app_url}/v1", api_key="unused", max_retries=0, timeout=300)
    variant = gpu_args()["llm_variant"]
    assert {m.id: getattr(m, "variant", None) for m in client.models.list().data}[CHAT] == variant
    r = client.chat.completions.create(model=CHAT, temperature=0, max_tokens=24,
                                       messages=[{"role": "user", "content": QUESTION}])
    text = r.choices[0].message.content
    assert "Paris" in text
    alone = TextGenerator(llm_dir, variant=variant, threads=1, device="cpu")
    prompt = alone.chat.encode(alone.chat.chat_prompt([{"role": "user", "content": QUESTION}]))
    assert text == alone.complete(prompt, SamplingParams(max_tokens=24, temperature=0)).text


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU is here")
def test_device_cuda_never_falls_back_to_the_cpu_silently(llm_dir):
    """onnxruntime-gpu without a usable GPU logs a line and runs on the CPU; `device: cuda` must
    refuse instead (with the CPU wheel there is no CUDA provider at all: refused too)."""
    from core.llm.session import make_session

    with pytest.raises(RuntimeError, match="cuda"):
        make_session(str(llm_dir / "q4.onnx"), threads=1, device="cuda")
