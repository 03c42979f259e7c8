"""The refusal storm of bench/refusal_cost.py with the early refusal in Serve's HTTP proxy vs in
the Ingress replica (issue 15): CPU ms per refusal by process, and p50/p99 latency.

Serve's proxy runs serve_app.proxy_refusal (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH, as
`make serve` sets it); two apps side by side, identical but for `proxy_refusal`, so one proxy
serves both. Storms alternate between them (ABAB..., --rounds each), so both see the same noise:
N requests at C concurrent from a key over its requests quota (429), the engine idle.

    python -m bench.refusal_cost_proxy [--rounds 4 --storm 600 --at 200]
    # -> bench/results/refusal_cost_proxy.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from core.build.artifacts import SERVED_VARIANT  # noqa: E402
from serve_app.proxy_refusal import CALLBACK, CALLBACK_ENV  # noqa: E402

from .common import machine, markdown_table, wait_until_ok, write  # noqa: E402
from .refusal_cost import KEYS, storm  # noqa: E402

os.environ[CALLBACK_ENV] = CALLBACK  # both apps behind one proxy that runs the callback

PORT = 8769
MODES = {"storm-proxy": True, "storm-ingress": False}  # app name -> proxy_refusal


async def main_async(args: argparse.Namespace) -> None:
    import ray
    from ray import serve

    from serve_app.app import build_graph

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    base = f"http://127.0.0.1:{args.port}"
    for name, in_proxy in MODES.items():  # the LLM only answers load polls here: a small engine
        app_args = {"device": "cpu", "llm_variant": args.variant, "llm_spinning": False, "llm_threads": 1,
                    "engine": {"max_running": 4, "max_seq_len": 512}, "cache": {"enabled": False},
                    "api_keys": KEYS, "quotas": {"capped": {"requests_per_min": 1}},
                    "proxy_refusal": in_proxy}
        serve.run(build_graph(app_args), name=name, route_prefix=f"/{name}")
        wait_until_ok(f"{base}/{name}/healthz", 120)
    runs: dict[str, list[dict]] = {name: [] for name in MODES}
    for _ in range(args.rounds):
        for name in MODES:
            runs[name].append(await storm(f"{base}/{name}", name, args.storm, args.at))
            await asyncio.sleep(args.pause)
    serve.shutdown()
    rows = []
    for name, got in runs.items():
        cpu = {k: statistics.median(r["cpu_ms_per_refusal"][k] for r in got)
               for k in got[0]["cpu_ms_per_refusal"]}
        rows.append([f"refused in the {name.removeprefix('storm-')}", len(got),
                     sum(r["refusals"] for r in got),
                     f"{statistics.median(r['wall_s'] for r in got):.2f}",
                     f"{statistics.median(r['p50_s'] for r in got):.2f}",
                     f"{statistics.median(r['p99_s'] for r in got):.2f}",
                     f"{max(r['p99_s'] for r in got):.2f}",
                     *(f"{cpu.get(k, 0.0):.2f}" for k in ("proxy", "ingress", "llm", "client")),
                     f"{sum(cpu.get(k, 0.0) for k in ('proxy', 'ingress', 'llm')):.2f}"])
    table = markdown_table(["where", "storms", "429s", "wall s", "p50 s", "p99 s", "worst p99 s",
                            "proxy ms", "ingress ms", "llm ms", "client ms", "server ms"], rows)
    head = (f"# Refusals in Serve's proxy vs in the Ingress\n\n{args.rounds} storms each, interleaved: "
            f"{args.storm} requests at {args.at} concurrent from a key over its requests quota (429), "
            "the engine idle. Medians over the storms; CPU ms per refusal by process (server = proxy "
            "+ ingress + llm).\n\n")
    write("refusal_cost_proxy", {"machine": machine(), "config": vars(args), "runs": runs}, head + table)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--storm", type=int, default=600, help="requests in each storm")
    ap.add_argument("--at", type=int, default=200, help="the storm's concurrency")
    ap.add_argument("--pause", type=float, default=2.0, help="seconds between storms")
    ap.add_argument("--variant", default=SERVED_VARIANT)
    ap.add_argument("--port", type=int, default=PORT)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
