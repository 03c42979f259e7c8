"""What the optimizer writes: the Serve config, the markdown report and the latency/quality plots."""

from __future__ import annotations

from pathlib import Path

import yaml

from .chooser import Budget, Choice, latency

REPO = Path(__file__).resolve().parents[2]


def _rel(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def write_config(pick: str, budget: Budget, row: dict, base: Path, out: Path) -> None:
    """configs/local.yaml with args.llm_variant set to the pick; everything else as the base has it."""
    config = yaml.safe_load(base.read_text())
    app = next(a for a in config["applications"] if a["import_path"] == "serve_app.app:build_app")
    app.setdefault("args", {})["llm_variant"] = pick
    header = (
        f"# Written by `python -m core.optimize` (edit {base.name} and rerun rather than this file).\n"
        f"# Pick: {pick} ({row['technique']}); budget: {budget.latency_metric} <= "
        f"{budget.target_latency_ms:g} ms, perplexity <= fp32 x{1 + budget.max_ppl_increase:.3f}.\n"
        f"# Measured: {latency(row, budget):.1f} ms, ppl x{row['ppl_ratio']:.4f}, "
        f"task accuracy {row['task_accuracy']:.2f} (threads {row['threads']}, spinning "
        f"{'on' if row['spinning'] else 'off'}). Start: `serve run {_rel(out)}`\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(config, sort_keys=False))


def _mb(n: float) -> str:
    return f"{n / 1e6:.0f}"


def table(rows: list[dict], choice: Choice | None = None) -> str:
    head = ("| variant | technique | latency: decode b=1 ms/tok (tok/s) | prefill 128 ms | cost: MB on "
            "disk / peak RSS MB | decode b=8 tok/s | quality: ppl ratio | KL | top-1 | greedy 64 | "
            "task acc |" + (" verdict |" if choice else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        verdict = ""
        if choice:
            verdict = choice.verdicts.get(r["name"], "")
            verdict = f" **PICK** ({verdict}) |" if r["name"] == choice.pick else f" {verdict} |"
        lines.append(
            f"| {r['name']} | {r['technique']} | {r['decode_ms_per_token']} ({r['decode_tok_s_b1']}) | "
            f"{r['prefill_ms_128']} | {_mb(r['bytes'])} / {r.get('peak_rss_mb', 'n/a')} | "
            f"{r['decode_tok_s_b8']} | {r['ppl_ratio']:.4f} | {r['kl']:.4f} | {r['top1_agreement']:.3f} | "
            f"{r['greedy_agreement']:.2f} ({r['greedy_identical']}) | {r['task_accuracy']:.2f} |{verdict}")
    return "\n".join(lines) + "\n"


def paired_table(rows: list[dict]) -> str:
    """Each variant's task accuracy against fp32's, paired on the same questions (core/quant/paired.py)."""
    head = ("| variant | task acc | diff vs fp32 [95% CI] | discordant b / c | McNemar p | answers "
            "identical to fp32 | verdict |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lo, hi = r["acc_diff_ci"]
        verdict = "**significantly worse**" if r["significantly_worse"] else "not significantly worse"
        lines.append(f"| {r['name']} | {r['task_accuracy']:.3f} | {r['acc_diff']:+.3f} "
                     f"[{lo:+.3f}, {hi:+.3f}] | {r['discordant'][0]} / {r['discordant'][1]} | "
                     f"{r['mcnemar_p']:.3g} | "
                     f"{r['answers_identical']} | {'reference' if r['name'] == 'fp32' else verdict} |")
    return "\n".join(lines) + "\n"


PAIRED_NOTE = (
    "Task set: core/quant/data/tasks.jsonl, short questions written by hand and not filtered by any "
    "model's answers; greedy answers of at most 24 tokens through the chat template, right when an "
    "accepted answer appears as whole words in the first line (core/quant/checker.py). b = questions "
    "fp32 gets right and the variant wrong, c = the reverse; p: exact McNemar test (two-sided binomial "
    "on b of b + c); CI: percentile bootstrap over questions, 10,000 resamples. A variant is "
    "significantly worse when p < 0.05 and b > c; the optimizer never picks one. Answers identical: "
    "greedy answer token for token the same as fp32's.")


def plot(rows: list[dict], budget: Budget, choice: Choice, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    lat = [latency(r, budget) for r in rows]
    limit = 1 + budget.max_ppl_increase
    panels = [("ppl_ratio", "perplexity / fp32 (log)", None),
              ("ppl_ratio", "perplexity / fp32, zoom on the budget", (0.995, max(1.1, limit + 0.02))),
              ("top1_agreement", "teacher-forced top-1 agreement with fp32", None),
              ("task_accuracy", "task accuracy (hand-written questions, unselected)", None)]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    for ax, (key, label, zoom) in zip(axes.flat, panels, strict=True):
        for i, (r, x) in enumerate(zip(rows, lat, strict=True)):
            if zoom and not zoom[0] <= r[key] <= zoom[1]:
                continue
            colour = "tab:green" if r["name"] == choice.pick else (
                "tab:grey" if r.get("device") == "gpu" else "tab:blue")
            ax.scatter(x, r[key], color=colour, s=40)
            # alternate label offsets: neighbours at similar latency stay readable
            ax.annotate(r["name"], (x, r[key]), fontsize=8, xytext=(5, 7 if i % 2 else -11),
                        textcoords="offset points")
        ax.axvline(budget.target_latency_ms, color="tab:red", ls="--", lw=1, label="latency target")
        if key == "ppl_ratio":
            ax.axhline(limit, color="tab:orange", ls="--", lw=1, label="ppl budget")
        if key == "ppl_ratio" and not zoom:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
            top = max(r[key] for r in rows)
            ax.set_yticks([t for t in (1, 1.1, 1.25, 1.5, 2, 3, 4, 6, 8) if t <= top * 1.1])
        if zoom:
            ax.set_ylim(*zoom)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ticks = (5, 10, 15, 20, 30, 50, 100, 200, 500, 1000)
        ax.set_xticks([t for t in ticks if min(lat) / 1.5 <= t <= max(lat) * 1.5])
        ax.set_xlabel(f"{budget.latency_metric}, ms (log; lower is faster)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"LM variants: latency vs quality (green: pick {choice.pick}; grey: GPU variant run on CPU)")
    fig.tight_layout()
    path = out_dir / "optimizer_latency_vs_quality.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def report(rows: list[dict], budget: Budget, choice: Choice, machine: dict, config: Path,
           plots: list[Path], seconds: float, load_before: float | None = None) -> str:
    fp32 = next(r for r in rows if r["name"] == "fp32")
    load = max(load_before or 0.0, machine["load_avg_1m"])
    four_bit = [r for r in rows if r["bits"] == 4]
    limit = 1 + budget.max_ppl_increase
    best4 = min(four_bit, key=lambda r: (r["ppl_ratio"] > limit, -r["decode_tok_s_b1"]), default=None)
    lines = [
        "# Optimizer report: technique / latency / cost / quality impact",
        "",
        f"Measured by `python -m core.optimize` on {machine['cpu']} ({machine['cores']} cores), "
        f"onnxruntime {machine['onnxruntime']}, {machine['date']} (1-min load average at the end: "
        f"{machine['load_avg_1m']}, other work shares this machine); threads {fp32['threads']}, "
        f"ORT spinning {'on' if fp32['spinning'] else 'off'}; all variants in one run, timings "
        f"interleaved round by round (decode: median step of the best round; prefill: best round). "
        f"Whole run: {seconds / 60:.1f} min.",
        "",
        f"Budget: `{budget.latency_metric}` <= {budget.target_latency_ms:g} ms, perplexity <= fp32 "
        f"x{1 + budget.max_ppl_increase:.3f}"
        + (f", task accuracy >= {budget.min_task_accuracy}" if budget.min_task_accuracy else "")
        + (f", top-1 >= {budget.min_top1}" if budget.min_top1 else "") + ".",
        "",
        *([f"**Warning:** the 1-min load average was {load:.1f} on {machine['cores']} cores while "
           "measuring: other work competed for the CPU, so absolute latencies are inflated (ratios "
           "between variants, measured interleaved, hold better). Rerun on a quiet machine before "
           "trusting a latency verdict.", ""] if load > machine["cores"] else []),
        f"**Decision:** {choice.message}",
        f"Config written: `{_rel(config)}` "
        f"(`llm_variant: {choice.pick}`).",
        "",
        table(rows, choice),
        "## Task accuracy vs fp32, paired",
        "",
        paired_table(rows),
        PAIRED_NOTE,
        "",
    ]
    if best4:
        lines += [f"Best 4-bit variant: **{best4['name']}**: perplexity x{best4['ppl_ratio']:.4f} of fp32, "
                  f"decode b=1 {best4['decode_speedup_vs_fp32']}x fp32's speed, prefill "
                  f"{best4['prefill_ratio_vs_fp32']}x fp32's time.", ""]
    lines += [
        "Metrics: latency is per decoded token at batch 1 after a 16-token prompt; prefill is one "
        "128-token prompt; decode b=8 is 8 right-padded rows, tokens/s in total. Quality is against "
        "this run's fp32 on the shipped data (core/quant/data): perplexity of heldout.txt, "
        "teacher-forced KL(fp32||variant) and top-1 agreement on the same text, greedy agreement = "
        "mean share of 64 greedy tokens identical to fp32's before the first divergence on "
        "prompts.jsonl (identical prompts in brackets), task accuracy on tasks.jsonl (see the "
        "paired table).",
        "",
        *[f"![latency vs quality]({p.name})" for p in plots],
        "",
    ]
    return "\n".join(lines)
