"""``poolft report``: ``recipes/results/**/*.json`` -> ``recipes/README.md`` tables and plots.

The output depends only on the JSON files (sorted, fixed formatting, no dates), so regenerating
it from the same files gives the same bytes; a test checks the committed README against them.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

HEAD_ORDER = ["stock", "cls", "mean", "max", "attention", "window", "meanmax", "gem"]
TRACK_ORDER = ["finetune", "probe"]
START, END = "<!-- poolft-report:start -->", "<!-- poolft-report:end -->"


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every per-seed result (rate-search runs excluded), in a stable order."""
    files = sorted(p for p in results_dir.rglob("*.json") if "rate-search" not in p.parts)
    return [json.loads(p.read_text(encoding="utf-8")) for p in files]


def load_search_runs(results_dir: Path) -> list[dict[str, Any]]:
    """The rate-search runs (only their cost is reported: their accuracy is on held-out training data)."""
    files = sorted(p for p in results_dir.rglob("*.json") if "rate-search" in p.parts)
    records = [json.loads(p.read_text(encoding="utf-8")) for p in files]
    return [r for r in records if "task" in r and "wall_seconds" in r]


def cost_line(runs_by_head: dict[str, list[dict[str, Any]]], search_runs: list[dict[str, Any]]) -> str:
    """How many runs the track took and their summed wall time."""
    seeds = [r for runs in runs_by_head.values() for r in runs]
    every = seeds + search_runs
    total = sum(r["wall_seconds"] for r in every)
    slowest = max(r["wall_seconds"] for r in every)
    return (
        f"- Sweep cost: {len(seeds)} seed runs + {len(search_runs)} rate-search runs, {total / 60:.1f} min of run "
        f"wall time in total; the slowest run {slowest:.0f} s"
        + (
            " (the first run computes the cached backbone states)"
            if seeds[0]["hyperparameters"]["train"].get("feature_cache")
            else ""
        )
    )


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def grouped(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[dict[str, Any]]]]:
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        groups[(result["task"], result["track"])][result["head"]].append(result)
    return groups


def ordered_heads(heads: Any) -> list[str]:
    return sorted(heads, key=lambda h: (HEAD_ORDER.index(h) if h in HEAD_ORDER else len(HEAD_ORDER), h))


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


def task_table(runs_by_head: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown rows: one per head, mean ± std over seeds, and the difference to the stock head."""
    stock = runs_by_head.get("stock")
    stock_mean = mean_std([r["final"]["accuracy"] for r in stock])[0] if stock else None
    lines = [
        "| head | accuracy % (mean ± std) | macro-F1 % | seeds | Δ vs stock (points) | chosen rate "
        "| train samples/s | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for head in ordered_heads(runs_by_head):
        runs = sorted(runs_by_head[head], key=lambda r: r["seed"])
        accuracy, spread = mean_std([r["final"]["accuracy"] for r in runs])
        f1, _ = mean_std([r["final"]["macro_f1"] for r in runs])
        delta = "—" if stock_mean is None or head == "stock" else f"{100 * (accuracy - stock_mean):+.2f}"
        rate = runs[0].get("rate")
        speed = statistics.fmean([r["train_samples_per_second"] or 0.0 for r in runs])
        wall = statistics.fmean([r["wall_seconds"] for r in runs])
        spread_text = f" ± {percent(spread)}" if spread is not None else ""
        lines.append(
            f"| {head} | {percent(accuracy)}{spread_text} | {percent(f1)} | {len(runs)} | {delta} | "
            f"{rate:g} | {speed:.1f} | {wall:.0f} |"
            if rate is not None
            else f"| {head} | {percent(accuracy)}{spread_text} | {percent(f1)} | {len(runs)} | {delta} | — | "
            f"{speed:.1f} | {wall:.0f} |"
        )
    return lines


def budget_lines(runs_by_head: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Backbone, data, budget and hardware, from the first run (they are shared by the grid)."""
    first = runs_by_head[ordered_heads(runs_by_head)[0]][0]
    hyper = first["hyperparameters"]
    data, train = hyper["data"], hyper["train"]
    cpus = sorted(
        {
            f"{r['hardware'].get('cpu')} ({r['hardware'].get('cpu_count')} cores)"
            for runs in runs_by_head.values()
            for r in runs
        }
    )
    size = f"image size {data['image_size']} px" if data.get("image_size") else f"max length {data['max_length']}"
    commits = sorted({r["software"]["poolft_commit"][:12] for runs in runs_by_head.values() for r in runs})
    lines = [
        f"- Backbone: `{first['backbone']['path']}` (weights sha256 `{first['backbone']['sha256'][:16]}…`)",
        f"- Data: train {first['train_size']} examples, evaluated on the full `{data['eval_split']}` split "
        f"({first['eval_size']} examples); {size}",
        f"- Budget per run: {train['epochs']:g} epoch(s), batch {train['batch_size']}, "
        f"{train['scheduler']} schedule, mixed precision {first['mixed_precision']}"
        + (", frozen backbone (features cached once)" if train["feature_cache"] else ", whole model trained"),
        rate_line(first),
        f"- Hardware: {'; '.join(cpus)}",
        f"- poolft commit(s): {', '.join(commits)}",
    ]
    return lines


def rate_line(run: dict[str, Any]) -> str:
    """How the rate was chosen: a held-out search, or one fixed rate."""
    if run.get("rate_search"):
        grid = ", ".join(sorted(run["rate_search"], key=float))
        share = run.get("rate_search_holdout")
        held_out = f"a {share:.0%} held-out share" if share else "a held-out share"
        return (
            f"- Rate searched: `{run.get('rate_key')}` over {grid} on {held_out} of the training split (seed 0); "
            "the table reports only the chosen rate"
        )
    return f"- Rate: one fixed `{run.get('rate_key', 'learning rate')}` (no search for this track)"


def plot(runs_by_head: dict[str, list[dict[str, Any]]], title: str, path: Path) -> None:
    """Accuracy per head with std error bars, and mean learning curves, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = ordered_heads(runs_by_head)
    figure, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4))
    means, errors = [], []
    for head in heads:
        mean, spread = mean_std([100 * r["final"]["accuracy"] for r in runs_by_head[head]])
        means.append(mean)
        errors.append(spread or 0.0)
    bars.bar(heads, means, yerr=errors, capsize=4, color="#4c72b0")
    low = min(m - e for m, e in zip(means, errors, strict=True))
    bars.set_ylim(max(0.0, math.floor(low - 2)), min(100.0, max(m + e for m, e in zip(means, errors, strict=True)) + 1))
    bars.set_ylabel("accuracy %")
    bars.set_title(title)
    for head in heads:
        steps: dict[int, list[float]] = defaultdict(list)
        for run in runs_by_head[head]:
            for point in run.get("curve", []):
                steps[point["step"]].append(100 * point["accuracy"])
        if steps:
            xs = sorted(steps)
            curves.plot(xs, [statistics.fmean(steps[x]) for x in xs], marker="o", label=head)
    curves.set_xlabel("optimiser step")
    curves.set_ylabel("eval accuracy % (mean over seeds)")
    curves.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(figure)


def render(
    results: list[dict[str, Any]],
    plots_dir: Path | None,
    plots_link: str = "plots",
    search_runs: list[dict[str, Any]] | None = None,
) -> str:
    """The recipes README as text (plots are written when ``plots_dir`` is given)."""
    lines = [
        "# Recipes: what each pooling head scores",
        "",
        "Generated by `poolft report` from `recipes/results/**/*.json` (one file per run, written by",
        "`poolft sweep`); do not edit by hand. Accuracy on the full evaluation split, mean ± sample std",
        "over seeds; Δ is the difference of the mean to the stock Hugging Face head on the same backbone,",
        "data and budget, trained by the same loop.",
        "",
    ]
    groups = grouped(results)
    if not groups:
        lines.append("No results yet: run `poolft sweep` (see recipes/*/README lines in the YAML files).")
    for task, track in sorted(groups, key=lambda k: (k[0], TRACK_ORDER.index(k[1]) if k[1] in TRACK_ORDER else 9)):
        runs_by_head = groups[(task, track)]
        lines += [f"## {task} — {track}", ""]
        searches = [r for r in search_runs or [] if (r["task"], r["track"]) == (task, track)]
        lines += budget_lines(runs_by_head) + [cost_line(runs_by_head, searches), ""]
        lines += task_table(runs_by_head) + [""]
        name = f"{task}-{track}.png"
        if plots_dir is not None:
            plot(runs_by_head, f"{task} ({track})", plots_dir / name)
        lines += [f"![{task} {track}: accuracy per head and learning curves]({plots_link}/{name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def headline(results: list[dict[str, Any]]) -> str:
    """The tables alone, for the project README."""
    groups = grouped(results)
    lines = []
    for task, track in sorted(groups):
        lines += [f"**{task} — {track}**", ""] + task_table(groups[(task, track)]) + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(results_dir: Path, output: Path, readme: Path | None = None) -> str:
    """Write ``output`` (+ plots beside it); optionally refresh the marked block of ``readme``."""
    results = load_results(results_dir)
    text = render(results, output.parent / "plots", search_runs=load_search_runs(results_dir))
    output.write_text(text, encoding="utf-8")
    if readme is not None and readme.is_file():
        content = readme.read_text(encoding="utf-8")
        if START in content and END in content:
            before, rest = content.split(START, 1)
            _, after = rest.split(END, 1)
            link = "Full tables, plots, budgets and hardware: [recipes/README.md](recipes/README.md)."
            block = f"{START}\n{headline(results)}\n{link}\n{END}"
            readme.write_text(before + block + after, encoding="utf-8")
    return text
