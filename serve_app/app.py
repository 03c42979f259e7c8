"""The deployment graph, built from typed args: `serve run configs/local.yaml` calls build_app."""

from __future__ import annotations

import os
import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from core.build.artifacts import SERVED_VARIANT
from core.llm.engine import EngineConfig
from deployments.cache import CacheArgs, CacheDeployment
from deployments.draft import DraftDeployment
from deployments.embedder import EmbedderDeployment
from deployments.llm import LLMDeployment

from .ingress import Ingress
from .quotas import QuotaArgs

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


class AppArgs(BaseModel):
    """`args:` of the application in a Serve config. One code base for CPU and GPU."""

    model_config = ConfigDict(extra="forbid")

    device: Literal["auto", "cpu", "cuda"] = "auto"
    llm_variant: str = Field(SERVED_VARIANT, description="LM variant to serve: fp32, q4, w8-rtn32, ... "
                                                         "(built on demand)")
    llm_threads: int | None = Field(None, ge=1, description="ORT threads; default all cores")
    llm_spinning: bool | Literal["within_run"] = Field(
        False, description="ORT thread spinning; 'within_run' spins during a model step and parks "
                           "the threads after it, leaving the cores to Ray between steps. Always: "
                           "~1.4x at batch 1 on cores of its own, 2x slower when anything shares them")
    llm_nice: int = Field(0, ge=0, le=19, description="the LLM replica's model threads run this much "
                          "nicer (lower CPU priority): on shared cores the HTTP proxy and ingress "
                          "go first, so refusals and streamed tokens are not stuck behind decode. "
                          "Ray starts workers at nice 15 (RAY_worker_niceness), the kernel caps at "
                          "19: any value >= 4 puts the model at 19, the front keeping 2.4x its weight")
    stream_interval_ms: float = Field(0.0, ge=0, le=1000, description="streamed tokens are sent at most "
                                      "this often (the first at once): fewer, larger SSE chunks cost "
                                      "Ray/HTTP less CPU per token; 0 sends each token as it comes")
    stream_messages_per_s: float | None = Field(None, gt=0, description="a budget of streamed "
                                                "messages per second for the LLM replica, shared "
                                                "by its open streams: with N open, each sends at "
                                                "most every N/budget s (never more often than "
                                                "stream_interval_ms); None: the interval alone")
    embedder_threads: int | None = Field(None, ge=1)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    cache: CacheArgs = Field(default_factory=CacheArgs)
    api_keys: dict[str, str] | None = Field(None, description="API key -> tenant; also env "
                                                              "EFFSERVE_API_KEYS; none = auth off")
    quotas: dict[str, QuotaArgs] = Field(default_factory=dict, description="per tenant (API key's "
                                         "tenant; '*' = any other): requests/tokens per minute")
    early_refusal: bool = Field(True, description="the ingress refuses from its view of the engine's "
                                                  "expected wait, before tokenizing or a hop")
    proxy_refusal: bool = Field(True, description="with RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH="
                                "serve_app.proxy_refusal:middlewares where Ray starts, Serve's HTTP "
                                "proxy makes the early refusal (quota, expected wait) for this app, "
                                "saving a refusal the proxy -> ingress hop; without it, the ingress")
    prefix_routing: bool = Field(True, description="route requests to the replica holding their "
                                                   "prefix's KV (matters with >1 LLM replica)")


def build_app(args: dict) -> Application:
    """Serve's app builder: exactly one parameter, the config's `args`."""
    return build_graph(args)


def build_graph(args: dict, llm_options: dict | None = None,
                embedder_options: dict | None = None, draft_options: dict | None = None) -> Application:
    """`*_options` (tests, benchmarks) go to Deployment.options; configs use `deployments:`."""
    cfg = AppArgs(**args)
    draft = None
    if cfg.engine.speculative == "model" and cfg.engine.draft_placement == "deployment":
        draft = DraftDeployment.options(**(draft_options or {})).bind(
            variant=cfg.engine.draft_variant, threads=cfg.llm_threads, spinning=bool(cfg.llm_spinning),
            device=cfg.device, n_slots=cfg.engine.max_running, max_seq_len=cfg.engine.max_seq_len)
    llm = LLMDeployment.options(**(llm_options or {}))
    if cfg.prefix_routing:
        llm = llm.options(request_router_config=RequestRouterConfig(
            request_router_class="serve_app.routing:PrefixAffinityRouter",
            request_router_kwargs={"block_size": cfg.engine.prefix_block_size}))
    llm = llm.bind(variant=cfg.llm_variant, threads=cfg.llm_threads,
                             spinning=cfg.llm_spinning, device=cfg.device,
                             engine=cfg.engine.model_dump(), draft_deployment=draft,
                             stream_interval_ms=cfg.stream_interval_ms,
                             stream_messages_per_s=cfg.stream_messages_per_s, nice=cfg.llm_nice)
    embedder = EmbedderDeployment.options(**(embedder_options or {})).bind(
        threads=cfg.embedder_threads, device=cfg.device)
    cache = CacheDeployment.bind(embedder, cfg.cache.model_dump()) if cfg.cache.enabled else None
    return Ingress.bind(llm, embedder, cache, cfg.llm_variant, cfg.api_keys,
                        cfg.cache.near_cache_entries,
                        cfg.engine.max_queue_wait_s if cfg.early_refusal else None,
                        {t: q.model_dump() for t, q in cfg.quotas.items()},
                        secrets.token_urlsafe(24),  # per deploy: marks what Serve's proxy admitted
                        cfg.proxy_refusal)
