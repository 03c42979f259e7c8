"""Serving settings of `make serve`, each measured over HTTP: what configs/local.yaml should say.

    python -m bench.settings     # bench/results/settings.{json,md}

Each setting is configs/local.yaml with one change, started by `make serve` in turn (one app at a
time: they cannot share the 2 cores fairly), then loaded at 1 and 16 streams with distinct
128-token prompts and 128 new tokens, as bench.peer does. The first row is configs/local.yaml as
served; every other row changes one setting from it. Run it twice in reverse order to see the
drift of a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

import yaml

from .common import RESULTS, markdown_table, write
from .peer import APP_PORT, PROMPT_TOKENS, ROOT, make_prompts, measure, process, served_args

# The served default, then one change from it per row: what each of its choices is worth.
SETTINGS = {
    "served (configs/local.yaml)": {},
    "model below the proxy in CPU priority (llm_nice 10)": {"llm_nice": 10},
    "no stream interval (stream_interval_ms 0)": {"stream_interval_ms": 0},
    "no spinning (llm_spinning false)": {"llm_spinning": False},
    "stream message budget (stream_messages_per_s 40)": {"stream_messages_per_s": 40},
}
PLAN = {1: 4, 16: 32}


def config_with(change: dict) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    cfg["applications"][0]["args"].update(change)
    path = Path(tempfile.mkdtemp()) / "settings.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def run(args: argparse.Namespace) -> None:
    rows = []
    names = [n for n in SETTINGS if not args.only or n == next(iter(SETTINGS)) or args.only in n]
    names = names if not args.reverse else names[::-1]
    for name in names:
        with process(["make", "-s", "serve", f"SERVE_CONFIG={config_with(SETTINGS[name])}"],
                     RESULTS / "settings_app.log", f"http://127.0.0.1:{APP_PORT}/healthz"):
            url = f"http://127.0.0.1:{APP_PORT}"
            await measure(url, name, 1, make_prompts(2, PROMPT_TOKENS, seed=999))  # warm
            for streams, n in PLAN.items():
                # the same prompts for every setting: speculation makes speed depend on the prompt
                prompts = make_prompts(n, PROMPT_TOKENS, seed=streams)
                s = (await measure(url, name, streams, prompts)).summary()
                rows.append({"setting": name, "streams": streams, "gen_tok_s": s["gen_tok_s"],
                             "ttft_p50_ms": s["ttft_p50_ms"], "ttft_p99_ms": s["ttft_p99_ms"],
                             "itl_p50_ms": s["itl_p50_ms"], "errors": s["errors"]})
                print(rows[-1], flush=True)
    local = served_args()
    table = markdown_table(["setting", "streams", "gen tok/s", "TTFT p50 (ms)", "TTFT p99 (ms)",
                            "ITL p50 (ms)"],
                           [[r["setting"], r["streams"], r["gen_tok_s"], r["ttft_p50_ms"],
                             r["ttft_p99_ms"], r["itl_p50_ms"]] for r in rows])
    table += (f"\nconfigs/local.yaml sets llm_spinning: {local.get('llm_spinning')}, stream_interval_ms: "
              f"{local.get('stream_interval_ms', 0)}, llm_nice: {local.get('llm_nice', 0)}. Settings "
              f"measured one after another (load average at the end {os.getloadavg()[0]:.2f}).\n")
    write(args.name, {"rows": rows}, table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="the served config and the settings whose name contains this")
    ap.add_argument("--name", default="settings", help="result file name (bench/results/<name>.*)")
    ap.add_argument("--reverse", action="store_true", help="measure the settings in reverse order")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
