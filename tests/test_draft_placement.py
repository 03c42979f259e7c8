"""The draft model placed apart from its target: DraftServer (core), and as its own Serve deployment."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from core.llm.engine import EngineConfig, LLMEngine
from core.llm.sampling import SamplingParams
from core.llm.speculative import ModelDrafter
from core.llm.speculative.draft_server import DraftServer, RemoteDrafter

from .conftest import wait_healthy
from .test_engine_speculative import GREEDY, PROMPTS, ids

CHAT = "smollm2-135m-instruct"


def test_draft_server_drafts_like_a_local_drafter(generator):
    """Same drafts as a ModelDrafter in the target's process, through rollbacks and catch-ups."""
    ctx = ids(generator, PROMPTS[0])
    local = ModelDrafter(generator.runner, capacity=1024)
    server = DraftServer(generator.runner, n_slots=2, capacity=1024)
    tokens = list(ctx)
    for step, keep in enumerate([4, 0, 2, 4, 1]):  # drafts the "target" kept at each step
        want, _ = local.propose(tokens, 4)
        got = server.propose("a", tokens, 4).tokens
        assert got == want, f"step {step}"
        tokens += want[:keep] + [7 + step]  # kept drafts plus a correction: the rest rolls back
    assert server.live == 1


def test_draft_server_reuses_slots_least_recently_used_first(generator):
    server = DraftServer(generator.runner, n_slots=2, capacity=256)
    a, b, c = ([11, 12, 13 + i] for i in range(3))
    slot_a = server._drafter("a").slot
    server.propose("a", a, 1), server.propose("b", b, 1), server.propose("a", a, 1)
    server.propose("c", c, 1)  # no free slot: "b" (least recently used) gives up its slot
    assert set(server._drafters) == {"a", "c"} and server._drafters["a"].slot == slot_a
    server.release("c")
    assert server.live == 1 and len(server._free) == 1
    assert server.slots.lens[server._free[0]] == 0


def test_sampled_remote_drafts_follow_the_request_seed(generator):
    server = DraftServer(generator.runner, n_slots=2, capacity=256)
    params = SamplingParams(max_tokens=8, temperature=0.9, seed=3)
    ctx = ids(generator, "Tell me a story.")

    def drafts(key: str) -> tuple[list[int], np.ndarray]:
        drafter = RemoteDrafter(key, server.propose, server.release)
        return drafter.propose(ctx, 3, params, np.random.default_rng(42))

    (t1, q1), (t2, q2) = drafts("x"), drafts("y")
    assert t1 == t2 and q1.shape == (3, q1.shape[1]) and np.allclose(q1.sum(axis=1), 1, atol=1e-4)
    assert np.array_equal(q1, q2)


def test_engine_with_a_draft_service_equals_the_target_alone(fp32_generator, generator):
    reference = [fp32_generator.complete(ids(fp32_generator, p), GREEDY).text for p in PROMPTS]
    server = DraftServer(generator.runner, n_slots=4, capacity=1024)
    engine = LLMEngine(fp32_generator.runner, fp32_generator.chat,
                       EngineConfig(max_seq_len=1024, speculative="model", prefix_cache_bytes=0),
                       draft=server)
    outs = [engine.generate([ids(fp32_generator, p)], GREEDY)[0].text for p in PROMPTS]
    assert outs == reference
    stats = engine.spec.stats
    assert stats.accepted_tokens > 0 and stats.emitted_tokens > stats.steps
    assert server.live == 0  # finished sequences released their draft slots


class _BrokenDraftService:
    def __init__(self) -> None:
        self.calls = 0

    def propose(self, *args):
        self.calls += 1
        raise ConnectionError("draft replica is gone")

    def release(self, key: str) -> None:
        raise ConnectionError("draft replica is gone")


def test_a_failing_draft_service_degrades_to_plain_decoding(fp32_generator):
    broken = _BrokenDraftService()
    engine = LLMEngine(fp32_generator.runner, fp32_generator.chat,
                       EngineConfig(max_seq_len=1024, speculative="model", prefix_cache_bytes=0),
                       draft=broken)
    prompt = ids(fp32_generator, PROMPTS[1])
    out = engine.generate([prompt], GREEDY)[0]
    assert out.text == fp32_generator.complete(prompt, GREEDY).text
    assert broken.calls > 0 and engine.spec.stats.draft_tokens == 0


@pytest.fixture(scope="module")
def draft_app_url(serve_url):
    """fp32 target with the q4 build drafting from its own deployment."""
    from ray import serve

    from serve_app.app import build_graph

    args = {"device": "cpu", "llm_variant": "fp32", "llm_spinning": False, "cache": {"enabled": False},
            "engine": {"speculative": "model", "draft_variant": "q4", "draft_placement": "deployment",
                       "max_running": 4, "max_seq_len": 1024}}
    serve.run(build_graph(args, llm_options={"ray_actor_options": {"num_cpus": 0.5}},
                          draft_options={"ray_actor_options": {"num_cpus": 0.5}}),
              name="draft", route_prefix="/draft")
    url = f"{serve_url}/draft"
    wait_healthy(url)
    yield url
    serve.delete("draft")


def test_draft_deployment_serves_the_targets_greedy_output(draft_app_url, fp32_generator):
    from ray import serve

    status = serve.status().applications["draft"].deployments
    assert status["DraftDeployment"].status == "HEALTHY"
    for prompt in PROMPTS[:2]:
        body = {"model": CHAT, "messages": [{"role": "user", "content": prompt}], "max_tokens": 40,
                "temperature": 0}
        r = httpx.post(f"{draft_app_url}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        want = fp32_generator.complete(ids(fp32_generator, prompt), GREEDY).text
        assert r.json()["choices"][0]["message"]["content"] == want
    stats = serve.get_deployment_handle("LLMDeployment", app_name="draft").stats.remote().result()
    assert stats["speculative"]["accepted_tokens"] > 0
