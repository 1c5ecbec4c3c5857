"""``poolft compare``: which head for *your* data, and how much it matters -- with intervals.

The recipes answer the question on SST-2 and Fashion-MNIST; ``compare`` answers it on the user's
own config (``poolft train``'s YAML and overrides, no recipe needed). By default it runs every
head that fits the backbone on the probe track -- the backbone's states are computed once and
cached, then each head trains on them -- with 3 seeds and a per-head rate search on a held-out
share of the training split, exactly as ``poolft sweep`` does. It prints the table with 95%
paired-bootstrap intervals of each head's difference to the stock head, marks what is within
noise, names the best head and the heads tied with it, and writes a plot. ``--track finetune``
or ``lpft`` fine-tunes the whole model instead (slower: every run passes the backbone).
Finished runs are skipped, so an interrupted compare resumes where it stopped.

On the probe track the heads train one per core (``RunPool``): each on one thread, after the
backbone's states are cached with every core. The records are those of one process.
"""

from __future__ import annotations

import copy
import json
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from ..config import RunConfig, load_config
from ..errors import PoolftError
from ..pooling import available_poolers
from .report import budget_lines, grouped, plot, track_section
from .sweep import HEAD_VARIANTS, STOCK, Sweep, head_config, known_heads, parse_list, parse_rates, parse_seeds
from .workers import RunPool, usable_cores

TRACKS = {"probe": "probe", "finetune": "finetune", "lpft": "finetune-lpft", "finetune-lpft": "finetune-lpft"}
#: the rates searched by default: the head's rate on cached states, the backbone's when fine-tuning
DEFAULT_RATES = {"probe": "1e-3,3e-3,1e-2,3e-2", "finetune": "1e-5,3e-5,1e-4", "finetune-lpft": "1e-5,3e-5,1e-4"}
TASK = "compare"
TITLE = "# poolft compare"  # the first line of the README.md it writes


def track_config(base: RunConfig, track: str) -> RunConfig:
    """``base`` set up for ``track``: probe = frozen backbone with its states cached (and one training
    thread unless ``train.torch_threads`` is set); finetune = the whole model; finetune-lpft = the
    head first on cached states (1 epoch unless the config says). No run writes its model."""
    config = copy.deepcopy(base)
    # a run is a means to the table: its metrics, log and predictions are kept, not a copy of the
    # backbone per run (70 runs of MiniLM-L6 wrote 12 GB); train the chosen head with poolft train
    config.train.save_model = config.train.save_best_model = config.train.save_at_end = False
    probe = track == "probe"
    config.train.freeze_backbone = config.train.feature_cache = probe
    if probe and config.train.torch_threads is None:
        # a head on cached states runs small ops: one thread avoids OpenMP barrier stalls (the probe
        # recipes pin the same); the cache itself is still built with every core
        config.train.torch_threads = 1
    if track == "finetune-lpft":
        config.train.head_warmup_epochs = config.train.head_warmup_epochs or 1.0
    else:
        config.train.head_warmup_epochs = 0.0
    return config


def head_problem(base: RunConfig, head: str, track: str, backbone: str, backbone_config: Any) -> str | None:
    """Why ``head`` cannot run on this backbone (None when it can), from the checks a run makes."""
    from ..models.backbones import check_pooler_fits, check_stock_head, modality_of

    is_text = modality_of(backbone_config) == "text"
    try:
        config = head_config(base, head, track, backbone_config)
        if config.model.stock_head:
            check_stock_head(backbone, backbone_config, "text" if is_text else "image")
        else:
            check_pooler_fits(backbone, backbone_config, config.model.pooler, config.model.pooler_options)
    except PoolftError as error:
        return str(error)
    if is_text and head in HEAD_VARIANTS and config.model.pooler_options.get("grid"):
        return "2-D windows need a patch grid"
    return None


def choose_heads(
    base: RunConfig, requested: str | None, track: str, backbone: str, backbone_config: Any
) -> tuple[list[str], dict[str, str]]:
    """The heads to run and the ones skipped with the reason. Asked-for heads that cannot run are an
    error; by default every head is tried and the ones that do not fit the backbone are skipped."""
    if requested is not None:
        heads = parse_list(requested, str, "--poolers")
        if not heads:
            raise PoolftError("--poolers is empty; name heads (e.g. stock,mean,attention) or leave it out for all")
        unknown = [head for head in heads if head not in known_heads()]
        if unknown:
            raise PoolftError(f"unknown head(s) {', '.join(unknown)}; choose from {', '.join(known_heads())}")
        for head in heads:
            problem = head_problem(base, head, track, backbone, backbone_config)
            if problem:
                raise PoolftError(f"head {head} cannot run here: {problem}")
        return heads, {}
    heads, skipped = [], {}
    for head in [STOCK, *available_poolers(), *HEAD_VARIANTS]:
        problem = head_problem(base, head, track, backbone, backbone_config)
        if problem:
            skipped[head] = problem
        else:
            heads.append(head)
    return heads, skipped


def check_output(folder: Path) -> None:
    """``--output`` must be a folder poolft compare may write: new, or one an earlier compare wrote.

    Raises:
        PoolftError: it is a file, it cannot be created or written, or it holds a ``README.md`` or
            ``compare.png`` that poolft compare did not write (they would be replaced).
    """
    if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
        raise PoolftError(f"--output {folder} is a file; give a folder (a new one, or an earlier compare's)")
    for part in ("results", "runs"):
        if (folder / part).exists() and not (folder / part).is_dir():
            raise PoolftError(f"--output {folder} holds a file named {part}; choose a new folder (nothing was changed)")
    check_writable(folder)
    readme = folder / "README.md"
    ours = readme.is_file() and readme.read_text(encoding="utf-8", errors="replace").startswith(TITLE)
    for name in ("README.md", "compare.png"):
        if (folder / name).exists() and not ours:
            raise PoolftError(
                f"--output {folder} holds a {name} that poolft compare did not write; choose a new folder "
                "(nothing was changed)"
            )


def check_writable(folder: Path) -> None:
    """A one-line error when no file can be written in ``folder`` (folders made to check are removed)."""
    from ..training.run_folder import write_problem

    problem = write_problem(folder)
    if problem:
        raise PoolftError(f"--output {folder} cannot be written ({problem}); choose another folder")


def check_data(base: RunConfig, holdout: float | None, backbone: str, backbone_config: Any) -> None:
    """Load, check and encode the data as the runs will (with the rate search's hold-out when there is
    a search), so that a data mistake (an unreadable image, say) is one line before any run folder
    exists. The encoded splits stay in the ``datasets`` cache for the runs."""
    from ..training.loop import prepare_data

    prepare_data(copy.deepcopy(base), backbone, backbone_config)  # the seed runs' splits
    if holdout:  # the rate search's: training rows with a held-out share of them
        held_out = copy.deepcopy(base)
        held_out.data.holdout_fraction = holdout
        prepare_data(held_out, backbone, backbone_config)


def run_compare(
    config_path: str | None,
    overrides: list[str],
    poolers: str | None,
    seeds: str,
    rates: str | None,
    track: str,
    output: str,
    holdout: float,
    grid_extensions: int = 2,
    report: Any = None,
    workers: int | None = None,
) -> str:
    """The ``poolft compare`` command: run the grid, then return (and write) the table.

    Progress goes to ``report`` (default: stderr), so stdout holds the table alone. ``workers``:
    runs trained at once (default: one per core on the probe track, else 1).
    """
    report = report or (lambda message: print(message, file=sys.stderr))
    if track not in TRACKS:
        raise PoolftError(f"--track {track} is not one of {', '.join(TRACKS)}")
    track = TRACKS[track]
    if workers is None:
        workers = usable_cores() if track == "probe" else 1
    folder = Path(output)
    # the workers' fork server starts first: its imports overlap this process's own and the data check
    with RunPool(workers) as pool:
        from ..models.backbones import load_backbone_config, resolve_backbone

        check_output(folder)
        base = track_config(load_config(config_path, overrides), track)
        backbone = resolve_backbone(base.model.backbone)
        backbone_config = load_backbone_config(backbone, base.model)
        heads, skipped = choose_heads(base, poolers, track, backbone, backbone_config)
        for head, reason in skipped.items():
            report(f"poolft compare: skip {head}: {reason}")
        rate_list = parse_rates(rates, DEFAULT_RATES[track])
        check_data(base, holdout if len(rate_list) > 1 else None, backbone, backbone_config)
        rate_key = "train.head_learning_rate" if track == "probe" else "train.learning_rate"
        sweep = Sweep(
            base,
            TASK,
            track,
            heads,
            parse_seeds(seeds),
            rate_list,
            rate_key,
            holdout,
            folder / "results",
            folder / "runs",
            report=report,
            grid_extensions=grid_extensions,
        )
        pool.prepare = sweep.cache_builder()
        # the runs' progress lines go to stderr (as in the workers): stdout holds the table alone
        with redirect_stdout(sys.stderr):
            paths = sweep.run(pool)
    # this grid's records only: an earlier compare's other seeds or heads in the same folder stay out
    records = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    runs_by_head = grouped(records)[(TASK, track)]
    lines = [f"{TITLE} — {track}", ""]
    lines += budget_lines(runs_by_head)
    if skipped:
        lines.append(f"- Skipped (they do not fit this backbone): {', '.join(skipped)}")
    lines += ["", *track_section(records), ""]
    plot(runs_by_head, f"poolft compare ({track})", folder / "compare.png")
    lines.append("![accuracy per head and learning curves](compare.png)")
    text = "\n".join(lines) + "\n"
    (folder / "README.md").write_text(text, encoding="utf-8")
    return text
