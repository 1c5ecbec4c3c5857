"""``poolft report``: ``recipes/results/**/*.json`` -> ``recipes/README.md`` tables and plots.

The output depends only on the JSON files (sorted, fixed formatting, no dates), so regenerating
it from the same files gives the same bytes; a test checks the committed README against them.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PoolftError
from .significance import PairedDifference, best_and_tied, decode_predictions, kendall_tau, paired_bootstrap

HEAD_ORDER = [
    "stock",
    "cls",
    "mean",
    "max",
    "clsmean",
    "attention",
    "window",
    "window-sliding",
    "flatten",
    "meanmax",
    "gem",
]
TRACK_ORDER = ["finetune", "finetune-lpft", "probe"]
START, END = "<!-- poolft-report:start -->", "<!-- poolft-report:end -->"


def record_files(results_dir: Path) -> list[Path]:
    """The JSON records under ``results_dir``, sorted.

    Raises:
        PoolftError: ``results_dir`` is not a folder, or holds no record (a mistyped ``--results``
            would otherwise write an empty report over the tables).
    """
    if not results_dir.is_dir():
        raise PoolftError(
            f"--results {results_dir} is not a folder; pass the folder of `poolft sweep` records (nothing was written)"
        )
    files = sorted(results_dir.rglob("*.json"))
    if not files:
        raise PoolftError(
            f"--results {results_dir} holds no .json records; pass the folder `poolft sweep --results` wrote "
            "(nothing was written)"
        )
    return files


def read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PoolftError(f"cannot read record {path} ({error}); remove or restore it (nothing was written)") from None
    if not isinstance(record, dict):
        raise PoolftError(f"record {path} is not a JSON object; remove or restore it (nothing was written)")
    return record


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every per-seed result (rate-search runs excluded), in a stable order."""
    return [read_record(p) for p in record_files(results_dir) if "rate-search" not in p.parts]


def load_search_runs(results_dir: Path) -> list[dict[str, Any]]:
    """The rate-search runs (only their cost is reported: their accuracy is on held-out training data)."""
    records = [read_record(p) for p in record_files(results_dir) if "rate-search" in p.parts]
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


def ordered_groups(groups: Any) -> list[tuple[str, str]]:
    """``(task, track)`` keys by task, then tracks in ``TRACK_ORDER`` (unknown tracks last, by name)."""
    return sorted(groups, key=lambda k: (k[0], TRACK_ORDER.index(k[1]) if k[1] in TRACK_ORDER else 9, k[1]))


def head_correctness(runs: list[dict[str, Any]]) -> tuple[str, np.ndarray, np.ndarray] | None:
    """``(split, references, correct)`` of one head: ``correct`` is ``(seeds, examples)`` 0/1 in
    seed order. None when a seed recorded no per-example predictions."""
    if not all(r.get("predictions") for r in runs):
        return None
    runs = sorted(runs, key=lambda r: r["seed"])
    split = runs[0]["predictions"]["split"]
    rows, references = [], None
    for run in runs:
        predicted, seen = decode_predictions(run["predictions"])
        if run["predictions"]["split"] != split or (references is not None and not np.array_equal(seen, references)):
            raise PoolftError(f"{run['task']}/{run['track']}/{run['head']}: seeds evaluated on different examples")
        references = seen
        rows.append(predicted == seen)
    return split, references, np.stack(rows).astype(np.uint8)


def correctness_by_head(runs_by_head: dict[str, list[dict[str, Any]]]) -> dict[str, np.ndarray | None]:
    """Each head's ``(seeds, examples)`` correctness (None without predictions), checked to be paired:
    every head with predictions was evaluated on the same split, row for row."""
    found = {head: head_correctness(runs_by_head[head]) for head in ordered_heads(runs_by_head)}
    recorded = [(head, entry) for head, entry in found.items() if entry is not None]
    if recorded:
        first, (first_split, first_references, _) = recorded[0]
        for head, (split, references, _) in recorded[1:]:
            if split != first_split or not np.array_equal(references, first_references):
                raise PoolftError(f"{head} and {first} were evaluated on different examples: no paired comparison")
    return {head: None if entry is None else entry[2] for head, entry in found.items()}


def points(value: float) -> str:
    return f"{100 * value:+.2f}"


def interval_cells(interval: PairedDifference | None) -> str:
    """The ``95% CI`` and ``noise?`` cells of a table row."""
    if interval is None:
        return "— | —"
    return f"[{points(interval.low)}, {points(interval.high)}] | {'within noise' if interval.within_noise else ''}"


def rate_text(run: dict[str, Any]) -> str:
    """The chosen rate, flagged ``(edge)`` at an end of its searched grid (which should bracket it)."""
    rate = run.get("rate")
    if rate is None:
        return "—"
    grid = [float(r) for r in run.get("rate_search") or {}]
    at_edge = len(grid) > 1 and any(math.isclose(rate, end, rel_tol=1e-9) for end in (min(grid), max(grid)))
    return f"{rate:g} (edge)" if at_edge else f"{rate:g}"


def task_table(
    runs_by_head: dict[str, list[dict[str, Any]]], correct: dict[str, np.ndarray | None] | None = None
) -> list[str]:
    """Markdown rows: one per head, mean ± std over seeds, and the difference to the stock head with
    its paired-bootstrap 95% CI (``correct``: ``correctness_by_head``, computed when not given)."""
    correct = correctness_by_head(runs_by_head) if correct is None else correct
    stock = runs_by_head.get("stock")
    stock_mean = mean_std([r["final"]["accuracy"] for r in stock])[0] if stock else None
    stock_correct = correct.get("stock")
    lines = [
        "| head | accuracy % (mean ± std) | macro-F1 % | seeds | Δ vs stock (points) | 95% CI (points) | noise? "
        "| chosen rate | train samples/s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for head in ordered_heads(runs_by_head):
        runs = sorted(runs_by_head[head], key=lambda r: r["seed"])
        accuracy, spread = mean_std([r["final"]["accuracy"] for r in runs])
        f1, _ = mean_std([r["final"]["macro_f1"] for r in runs])
        delta = "—" if stock_mean is None or head == "stock" else points(accuracy - stock_mean)
        interval = None
        if head != "stock" and stock_correct is not None and correct.get(head) is not None:
            interval = paired_bootstrap(correct[head], stock_correct)
        speed = statistics.fmean([r["train_samples_per_second"] or 0.0 for r in runs])
        wall = statistics.fmean([r["wall_seconds"] for r in runs])
        spread_text = f" ± {percent(spread)}" if spread is not None else ""
        lines.append(
            f"| {head} | {percent(accuracy)}{spread_text} | {percent(f1)} | {len(runs)} | {delta} | "
            f"{interval_cells(interval)} | {rate_text(runs[0])} | {speed:.1f} | {wall:.0f} |"
        )
    return lines


def best_line(runs_by_head: dict[str, list[dict[str, Any]]], correct: dict[str, np.ndarray | None]) -> str:
    """The best head by mean accuracy and the heads whose paired-bootstrap Δ to it contains 0."""
    if len(runs_by_head) < 2:
        return f"Only head: **{ordered_heads(runs_by_head)[0]}**."
    means = {
        head: statistics.fmean([r["final"]["accuracy"] for r in runs_by_head[head]])
        for head in ordered_heads(runs_by_head)
    }
    if any(c is None for c in correct.values()):
        best = max(means, key=means.__getitem__)
        return (
            f"Best: **{best}** ({percent(means[best])}%); ties not tested (per-example predictions are not "
            "recorded for every head)."
        )
    best, tied, _ = best_and_tied({head: c for head, c in correct.items() if c is not None})
    within = ", ".join(tied) if tied else "none"
    return f"Best: **{best}** ({percent(means[best])}%); within noise of it (95% CI of Δ contains 0): {within}."


def track_section(records: list[dict[str, Any]]) -> list[str]:
    """One track's table and the best-head line under it, from that track's seed records (all heads).

    ``poolft report`` renders every (task, track) with it; ``poolft compare`` can render any set.
    """
    runs_by_head: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        runs_by_head[record["head"]].append(record)
    correct = correctness_by_head(runs_by_head)
    return task_table(runs_by_head, correct) + ["", best_line(runs_by_head, correct)]


def budget_lines(runs_by_head: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Backbone, data, budget and hardware, from the first run (they are shared by the grid)."""
    first = runs_by_head[ordered_heads(runs_by_head)[0]][0]
    hyper = first["hyperparameters"]
    data, train = hyper["data"], hyper["train"]
    cpus = sorted({machine(r["hardware"]) for runs in runs_by_head.values() for r in runs})
    if data.get("image_size"):
        size = f"image size {data['image_size']} px"
    elif data.get("text_column"):  # text runs record the column they read
        size = f"max length {data['max_length']}"
    else:
        size = "images at the image processor's size"
    commits = sorted({r["software"]["poolft_commit"][:12] for runs in runs_by_head.values() for r in runs})
    # train.max_steps, when set, ends a run before its epochs do
    length = f"{train['max_steps']} steps" if train.get("max_steps") else f"{train['epochs']:g} epoch(s)"
    lines = [
        f"- Backbone: `{first['backbone']['path']}` (weights sha256 `{first['backbone']['sha256'][:16]}…`)",
        f"- Data: train {first['train_size']} examples, evaluated on the full `{data['eval_split']}` split "
        f"({first['eval_size']} examples); {size}",
        f"- Budget per run: {length}, batch {train['batch_size']}, "
        f"{train['scheduler']} schedule, mixed precision {first['mixed_precision']}"
        + (", frozen backbone (features cached once)" if train["feature_cache"] else ", whole model trained"),
        rate_line(first, runs_by_head),
        f"- Hardware: {'; '.join(cpus)}",
        f"- poolft commit(s): {', '.join(commits)}",
    ]
    return lines


def machine(hardware: dict[str, Any]) -> str:
    """A run's CPU, core count and (when recorded) CPU flags, sorted."""
    flags = hardware.get("cpu_flags")
    listed = f"; flags {' '.join(sorted(flags))}" if flags else ""
    return f"{hardware.get('cpu')} ({hardware.get('cpu_count')} cores{listed})"


def rate_line(run: dict[str, Any], runs_by_head: dict[str, list[dict[str, Any]]] | None = None) -> str:
    """How the rate was chosen: a held-out search (the grid every head shared, and the rates a head
    added past an end of it), or one fixed rate."""
    if run.get("rate_search"):
        grids = {head: set(runs[0].get("rate_search") or {}) for head, runs in (runs_by_head or {"": [run]}).items()}
        shared = set.intersection(*grids.values())
        grid = ", ".join(sorted(shared, key=float))
        added = [
            f"{head} {', '.join(sorted(rates - shared, key=float))}"
            for head, rates in sorted(grids.items())
            if rates - shared
        ]
        extended = f"; grids extended past an end for {'; '.join(added)}" if added else ""
        share = run.get("rate_search_holdout")
        held_out = f"a {share:.0%} held-out share" if share else "a held-out share"
        return (
            f"- Rate searched: `{run.get('rate_key')}` over {grid} on {held_out} of the training split (seed 0)"
            f"{extended}; the table reports only the chosen rate"
        )
    return f"- Rate: one fixed `{run.get('rate_key', 'learning rate')}` (one rate given: no search)"


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


INTRO = """\
Generated by `poolft report` from `recipes/results/**/*.json` (one file per run, written by
`poolft sweep`); do not edit by hand. Accuracy on the full evaluation split, mean ± sample std
over seeds; Δ is the difference of the mean to the stock Hugging Face head on the same backbone,
data and budget, trained by the same loop. Its 95% CI is a paired bootstrap over the evaluation
examples (10,000 resamples with replacement, seed 0; each example's correctness averaged over a
head's seeds): "within noise" marks a head whose interval contains 0, so these examples cannot tell
it from the stock head. The interval covers the choice of evaluation examples, not the spread
between training seeds (see the std). "—" where a run recorded no per-example predictions. Under
each table: the best head by mean accuracy and the heads within noise of it by the same test. A
chosen rate marked "(edge)" is an end of its searched grid, which therefore may not bracket the
best rate."""


def mean_accuracy_by_head(runs_by_head: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    return {head: statistics.fmean([r["final"]["accuracy"] for r in runs]) for head, runs in runs_by_head.items()}


def ranking_lines(task: str, groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]]) -> list[str]:
    """Kendall's τ-b between the probe's per-head mean accuracies and each fine-tuning track's, over
    the heads recorded on both (at least 3); no lines when there is nothing to compare."""
    if (task, "probe") not in groups:
        return []
    probe = mean_accuracy_by_head(groups[(task, "probe")])
    rows = []
    for track in ("finetune", "finetune-lpft"):
        if (task, track) not in groups:
            continue
        tuned = mean_accuracy_by_head(groups[(task, track)])
        heads = ordered_heads(set(probe) & set(tuned))
        if len(heads) < 3:
            continue
        tau = kendall_tau([probe[h] for h in heads], [tuned[h] for h in heads])
        value = "undefined (one ranking is all ties)" if math.isnan(tau) else f"= {tau:.2f}"
        rows.append(f"- probe vs {track}: τ {value} over {len(heads)} heads ({', '.join(heads)})")
    if not rows:
        return []
    return [
        f"## {task} — how well the probe ranking predicts fine-tuning",
        "",
        "Kendall's τ-b between the heads' mean accuracies on the probe track and on a fine-tuning track,",
        "over the heads recorded on both (1: the same order, 0: unrelated, -1: reversed; ties allowed).",
        "\"stock\" is each track's own stock head: on the probe track what the family's Hugging Face classifier",
        "reads, computed from cached states (BERT: the class token through its pretrained dense + tanh; ViT: the",
        "class token; DINOv2: [CLS, mean(patch tokens)]), when fine-tuning that classifier itself.",
        "",
        *rows,
        "",
    ]


def render(
    results: list[dict[str, Any]],
    plots_dir: Path | None,
    plots_link: str = "plots",
    search_runs: list[dict[str, Any]] | None = None,
) -> str:
    """The recipes README as text (plots are written when ``plots_dir`` is given)."""
    lines = ["# Recipes: what each pooling head scores", "", INTRO, ""]
    groups = grouped(results)
    if not groups:
        lines.append("No results yet: run `poolft sweep` (the first lines of each recipe YAML give its command).")
    keys = ordered_groups(groups)
    for index, (task, track) in enumerate(keys):
        runs_by_head = groups[(task, track)]
        lines += [f"## {task} — {track}", ""]
        searches = [r for r in search_runs or [] if (r["task"], r["track"]) == (task, track)]
        lines += budget_lines(runs_by_head) + [cost_line(runs_by_head, searches), ""]
        lines += track_section([r for runs in runs_by_head.values() for r in runs]) + [""]
        name = f"{task}-{track}.png"
        if plots_dir is not None:
            plot(runs_by_head, f"{task} ({track})", plots_dir / name)
        lines += [f"![{task} {track}: accuracy per head and learning curves]({plots_link}/{name})", ""]
        if index + 1 == len(keys) or keys[index + 1][0] != task:  # the task's last track
            lines += ranking_lines(task, groups)
    return "\n".join(lines).rstrip() + "\n"


def headline(results: list[dict[str, Any]]) -> str:
    """The tables (and best-head lines) alone, for the project README: the same as in the recipes README."""
    groups = grouped(results)
    lines = []
    for task, track in ordered_groups(groups):
        records = [r for runs in groups[(task, track)].values() for r in runs]
        lines += [f"**{task} — {track}**", ""] + track_section(records) + [""]
    return "\n".join(lines).rstrip() + "\n"


def check_output_folder(output: Path) -> None:
    """``output``'s folder exists or can be made, and ``output`` is not a folder.

    Raises:
        PoolftError: ``output`` is a folder, or its folder is a file or cannot be created.
    """
    if output.is_dir():
        raise PoolftError(
            f"--output {output} is a folder; pass the Markdown file to write, e.g. {output / 'README.md'}"
        )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PoolftError(
            f"--output {output} cannot be written in {output.parent} ({error.strerror}); choose another path"
        ) from None


def write_report(
    results_dir: Path, output: Path, readme: Path | None = None, note: Callable[[str], None] = print
) -> str:
    """Write ``output`` (+ plots beside it); optionally refresh the marked block of ``readme``.

    Everything is read and checked before anything is written: a missing or empty ``results_dir``,
    an unreadable record or an unwritable ``output`` is a ``PoolftError`` that leaves every file as
    it was. ``note`` hears why ``readme`` was left alone (no file, or no markers).
    """
    results = load_results(results_dir)
    search_runs = load_search_runs(results_dir)
    check_output_folder(output)
    text = render(results, output.parent / "plots", search_runs=search_runs)
    output.write_text(text, encoding="utf-8")
    if readme is None:
        return text
    if not readme.is_file():
        note(f"poolft report: {readme} does not exist; no README block updated")
        return text
    content = readme.read_text(encoding="utf-8")
    if START not in content or END not in content:
        note(f"poolft report: {readme} has no {START} ... {END} block; it was left as it was")
        return text
    before, rest = content.split(START, 1)
    _, after = rest.split(END, 1)
    target = Path(os.path.relpath(output.resolve(), readme.resolve().parent)).as_posix()
    link = f"Full tables, plots, budgets and hardware: [{target}]({target})."
    block = f"{START}\n{headline(results)}\n{link}\n{END}"
    readme.write_text(before + block + after, encoding="utf-8")
    return text
