"""``poolft sweep``: the (head x seed) grid of one recipe, with a per-head rate search, resumable.

For every head: (1) unless a rate was already chosen, train once per candidate rate on the
training split minus a held-out share and evaluate on that share; the best held-out accuracy picks
the rate; (2) train every seed at that rate on the full training split and evaluate on the
evaluation split. Each finished run becomes one JSON file under ``results/<task>/<track>/``; a
file that exists for the same config is skipped, and an interrupted run resumes from its latest
checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig, config_from_dict, load_config
from ..errors import PoolftError
from ..pooling import available_poolers
from ..training.feature_cache import file_digest, weights_digest
from ..training.loop import PREDICTIONS_FILE
from ..training.run_folder import CONFIG_FILE, holds_other_run, set_aside, write_json
from ..training.run_info import numeric_kind
from .significance import encode_predictions
from .workers import RunPool

STOCK = "stock"


# settings added after results were recorded, with the value that behaves as before they existed:
# left out of the identity at that value, so the recorded runs keep their hashes
ADDED_SETTINGS = {
    ("train", "fast_kernels"): False,
    ("train", "head_warmup_epochs"): 0.0,
    ("model", "head_from"): None,
    ("model", "gradient_checkpointing"): False,
    ("model", "lora"): None,
    ("train", "merge_lora_at_end"): False,
    ("train", "layer_decay"): None,
    ("train", "ema_decay"): None,
    ("train", "early_stopping_patience"): None,
    ("train", "label_smoothing"): 0.0,
    ("data", "label_columns"): None,
    ("train", "compile"): False,
    ("data", "pad_to_multiple_of"): None,
}
# defaults changed after results were recorded: (new default, the value it is hashed as). An unset
# data.text_column is chosen from the data; the recorded runs had "sentence" there (the old
# default), which images ignore and which the SST-2 data's own choice is
CHANGED_DEFAULTS = {("data", "text_column"): (None, "sentence")}


def run_hash(config: RunConfig, precision: str | None = None) -> str:
    """Identity of a run: every setting except where it writes (its output and feature cache folders),
    whether it writes the final model, how it reports progress and how long it waits for other
    processes, with ``mixed_precision`` resolved on this machine.

    ``auto`` is bf16 on an AMX CPU and fp32 elsewhere, and a bf16 run's numbers depend on the CPU's
    matrix features: so the identity holds the resolved precision and, for 16-bit, those features
    (``precision_identity``). Full precision is hashed as ``auto``, the value the runs recorded
    before this rule held (their ``auto`` resolved to fp32), so their identities stand.
    ``precision`` gives the precision identity of another machine (a record's), else this one's.
    """
    values = config.to_dict()
    precision = precision or this_machine_precision(config)
    values["train"]["mixed_precision"] = "auto" if precision == "no" else precision
    run_keys = ("output_dir", "resume_from_checkpoint", "overwrite_output_dir", "progress", "save_model")
    for key in (*run_keys, "distributed_timeout_seconds"):
        values["train"].pop(key, None)
    values["train"]["feature_cache_dir"] = None  # where the cached states live; hashed as the records' default
    for (section, key), earlier_behaviour in ADDED_SETTINGS.items():
        if values[section].get(key) == earlier_behaviour:
            values[section].pop(key)
    for (section, key), (default, recorded_as) in CHANGED_DEFAULTS.items():
        if values[section].get(key) == default:
            values[section][key] = recorded_as
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


#: heads named for a pooler with options: the 2-D local windows of the window head on a patch grid
HEAD_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "window-sliding": ("window", {"grid": True, "mode": "sliding"}),
}
TRACKS = ("finetune", "finetune-lpft", "probe")


def this_machine_precision(config: RunConfig) -> str:
    """``precision_identity`` of ``config``'s ``mixed_precision`` resolved on this machine."""
    from ..training.loop import resolve_mixed_precision
    from ..training.run_info import precision_identity

    return precision_identity(resolve_mixed_precision(config.train.mixed_precision))


def head_config(base: RunConfig, head: str, track: str, backbone_config: Any) -> RunConfig:
    """The base config with ``head`` as pooler (``stock`` = the stock Hugging Face head; on the probe
    track its poolft equivalent on cached states, ``probe_stock_pooler``, which raises ``PoolftError``
    where there is none)."""
    from ..models.backbones import probe_stock_pooler

    config = copy.deepcopy(base)
    if head == STOCK:
        if track == "probe":
            pooler = probe_stock_pooler(base.model.backbone, backbone_config)
            config.model.pooler, config.model.pooler_options = pooler
        else:
            config.model.stock_head = True
    elif head in HEAD_VARIANTS:
        config.model.pooler, options = HEAD_VARIANTS[head]
        config.model.pooler_options = {**config.model.pooler_options, **options}
    else:
        config.model.pooler = head
    return config


def known_heads() -> list[str]:
    return [STOCK, *available_poolers(), *HEAD_VARIANTS]


def with_overrides(config: RunConfig, updates: dict[str, Any]) -> RunConfig:
    """A copy of ``config`` with ``{"section.key": value}`` applied (and validated)."""
    values = config.to_dict()
    for dotted, value in updates.items():
        section, key = dotted.split(".")
        values[section][key] = value
    return config_from_dict(values)


def data_fingerprint(config: RunConfig) -> dict[str, Any]:
    """The data files with their sha256, or the Hub id (config name) when not local."""
    files = config.data.data_files or {}
    described = {}
    for split, path in sorted(files.items()):
        digest = file_digest(path) if Path(path).is_file() else None
        described[split] = {"path": path, "sha256": digest}
    return {"files": described} if described else {"path": config.data.path, "name": config.data.name}


def same_data_files(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a record's data files hold what the current config's files hold (by sha256, per split)."""
    then, now = recorded.get("files"), current.get("files")
    if not then or not now:
        return True  # a Hub dataset: its id and revision are in the run's settings
    return {split: entry.get("sha256") for split, entry in then.items()} == {
        split: entry.get("sha256") for split, entry in now.items()
    }


def learning_curve(output_dir: Path) -> list[dict[str, float]]:
    curve = []
    for line in (output_dir / "log.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "eval_accuracy" in record:
            curve.append({"step": record["step"], "accuracy": record["eval_accuracy"], "loss": record["eval_loss"]})
    return curve


@dataclass
class RunJob:
    """One run of a sweep: its config, where its record and its output folder go, and what the
    record adds (the seed runs' chosen rate and the search behind it)."""

    config: RunConfig
    result: Path
    output_dir: Path
    head: str
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config.train.output_dir = str(self.output_dir)
        self.config.train.progress = False


def report_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Sweep:
    """One recipe's grid: ``heads x seeds`` on ``track``, results in ``results_dir/task/track``.

    ``run(pool)`` trains what is not recorded yet. With one worker it goes head by head (a long
    sweep stopped half way has whole heads done); with several it runs every head's rate grid, then
    the grid extensions, then every seed run, each stage's runs at once on the pool's workers.
    """

    def __init__(
        self,
        base: RunConfig,
        task: str,
        track: str,
        heads: list[str],
        seeds: list[int],
        rates: list[float],
        rate_key: str,
        holdout: float,
        results_dir: Path,
        runs_dir: Path,
        report: Callable[[str], None] = print,
        grid_extensions: int = 2,
        any_cpu: bool = False,
    ) -> None:
        self.base, self.task, self.track = base, task, track
        self.grid_extensions, self.any_cpu = grid_extensions, any_cpu
        self.heads, self.seeds, self.rates, self.rate_key, self.holdout = heads, seeds, rates, rate_key, holdout
        self.seconds_per_run: dict[str, float] = {}  # the longest wall time of a run of each head so far
        self.results = results_dir / task / track
        self.runs = runs_dir / task / track
        self.report = report
        from ..models.backbones import load_backbone_config, resolve_backbone

        self.backbone = resolve_backbone(base.model.backbone)
        self.backbone_config = load_backbone_config(self.backbone, base.model)

    def __getstate__(self) -> dict[str, Any]:
        # sent to worker processes: the report callable may be a closure; a worker reports to stderr
        return {**self.__dict__, "report": report_to_stderr}

    def cache_builder(self) -> Callable[[], None] | None:
        """For the probe track, what computes the backbone's cached states of the training and
        evaluation splits before the runs fan out to workers (the rate search reads the training
        split's); None for the other tracks."""
        if self.track != "probe":
            return None
        from ..training.loop import build_feature_caches

        return lambda: build_feature_caches(head_config(self.base, self.heads[0], self.track, self.backbone_config))

    def run(self, pool: RunPool | None = None) -> list[Path]:
        pool = pool or RunPool(1)
        if pool.workers == 1:
            return [path for head in self.heads for path in self.run_heads([head], pool)]
        return self.run_heads(self.heads, pool)

    def run_heads(self, heads: list[str], pool: RunPool) -> list[Path]:
        """Rate search of ``heads``, then every seed at each chosen rate.

        Each stage's runs go to the pool at once: the seed runs of the heads whose search is settled
        go with the grid extensions of the others, so that no worker waits at the end of a stage.
        """
        if len(self.rates) <= 1:  # no search: every seed run at the one rate
            chosen = self.choose_rates(heads, pool)
            return self.run_jobs(
                [self.seed_job(head, seed, *chosen[head]) for head in heads for seed in self.seeds], pool
            )
        searches: dict[str, dict[str, float]] = {head: {} for head in heads}
        paths: dict[tuple[str, int], Path] = {}
        self.search(searches, [(head, rate) for head in heads for rate in self.rates], pool)
        pending = list(heads)
        for stage in range(self.grid_extensions + 1):
            if not pending:
                break
            steps = self.extensions(searches, pending) if stage < self.grid_extensions else {}
            settled = [head for head in pending if head not in steps]
            seed_jobs = [
                self.seed_job(head, seed, *self.settle(head, searches[head])) for head in settled for seed in self.seeds
            ]
            rate_jobs = [self.rate_job(head, rate) for head, rate in steps.items()]
            results = self.run_jobs(rate_jobs + seed_jobs, pool)
            for (head, rate), result in zip(steps.items(), results, strict=False):
                searches[head][f"{rate:g}"] = json.loads(result.read_text())["final"]["accuracy"]
            paths.update(
                ((job.head, job.seed), path) for job, path in zip(seed_jobs, results[len(rate_jobs) :], strict=True)
            )
            pending = list(steps)
        return [paths[head, seed] for head in heads for seed in self.seeds]

    def choose_rate(self, head: str) -> tuple[float, dict[str, float]]:
        """Held-out accuracy of each candidate rate (seed 0); the best one is used for the seeds."""
        return self.choose_rates([head], RunPool(1))[head]

    def choose_rates(self, heads: list[str], pool: RunPool) -> dict[str, tuple[float, dict[str, float]]]:
        """For each head, the rate with the best held-out accuracy (seed 0) and the accuracy of each rate."""
        section, key = self.rate_key.split(".")
        if len(self.rates) <= 1:
            rate = self.rates[0] if self.rates else getattr(getattr(self.base, section), key)
            return {head: (rate, {}) for head in heads}
        searches: dict[str, dict[str, float]] = {head: {} for head in heads}
        self.search(searches, [(head, rate) for head in heads for rate in self.rates], pool)
        # a best rate at an end of the grid may not be the best: extend the grid past it
        for _ in range(self.grid_extensions):
            steps = self.extensions(searches, heads)
            if not steps:
                break
            self.search(searches, list(steps.items()), pool)
        return {head: self.settle(head, search) for head, search in searches.items()}

    def extensions(self, searches: dict[str, dict[str, float]], heads: list[str]) -> dict[str, float]:
        """The next rate of each of ``heads`` whose best rate is at an end of its grid (reported)."""
        steps = {head: step for head in heads if (step := self.extension(searches[head])) is not None}
        for head, step in steps.items():
            best = max(searches[head], key=lambda r, s=searches[head]: (s[r], -float(r)))
            self.report(f"poolft sweep: {head}: best rate {best} is at the end of the grid; trying {step:g}")
        return steps

    def settle(self, head: str, search: dict[str, float]) -> tuple[float, dict[str, float]]:
        """The chosen rate of a finished search (the best held-out accuracy; the lower rate on a tie)."""
        best = max(search, key=lambda r: (search[r], -float(r)))
        self.report(f"poolft sweep: {head}: held-out accuracy by {self.rate_key} {search} -> {best}")
        return float(best), search

    def search(self, searches: dict[str, dict[str, float]], runs: list[tuple[str, float]], pool: RunPool) -> None:
        for (head, rate), accuracy in zip(runs, self.held_out_accuracies(runs, pool), strict=True):
            searches[head][f"{rate:g}"] = accuracy

    @staticmethod
    def extension(search: dict[str, float]) -> float | None:
        """The rate one grid step past the best one when that is an end of the grid, better than its
        neighbour; None when the search is settled."""
        rates = sorted(float(r) for r in search)
        best = max(search, key=lambda r: (search[r], -float(r)))
        step = next_rate(rates, float(best))
        if step is None or len(rates) < 2:
            return None
        neighbour = rates[1] if float(best) == rates[0] else rates[-2]
        if search[best] <= search[f"{neighbour:g}"]:
            return None  # tied with the rate inside the grid: the end says nothing about going further
        return step

    def held_out_accuracies(self, runs: list[tuple[str, float]], pool: RunPool) -> list[float]:
        """For each ``(head, rate)``: trained on the training split minus the held-out share (seed 0),
        its accuracy on that share."""
        results = self.run_jobs([self.rate_job(head, rate) for head, rate in runs], pool)
        return [json.loads(result.read_text())["final"]["accuracy"] for result in results]

    def rate_job(self, head: str, rate: float) -> RunJob:
        config = head_config(self.base, head, self.track, self.backbone_config)
        config = with_overrides(config, {self.rate_key: rate, "data.holdout_fraction": self.holdout, "train.seed": 0})
        return RunJob(
            config,
            self.results / "rate-search" / f"{head}-rate{rate:g}.json",
            self.runs / "rate-search" / f"{head}-rate{rate:g}",
            head,
            0,
        )

    def seed_job(self, head: str, seed: int, rate: float, search: dict[str, float]) -> RunJob:
        config = head_config(self.base, head, self.track, self.backbone_config)
        config = with_overrides(config, {self.rate_key: rate, "train.seed": seed})
        extra = {
            "rate": rate,
            "rate_key": self.rate_key,
            "rate_search": search,
            "rate_search_holdout": self.holdout if search else None,
        }
        return RunJob(
            config, self.results / f"{head}-seed{seed}.json", self.runs / f"{head}-seed{seed}", head, seed, extra
        )

    def run_jobs(self, jobs: list[RunJob], pool: RunPool) -> list[Path]:
        """The record of each job: the recorded one where it is done, else trained (on the pool).

        The runs of the heads whose runs took longest so far start first (longest processing time
        first): a worker left with a long run at the end of a stage would keep the others waiting.
        """
        pending = [job for job in jobs if not self.recorded(job)]
        pending.sort(key=lambda job: -self.seconds_per_run.get(job.head, 0.0))  # stable: unknown keep their order
        trained = dict(zip((id(job) for job in pending), pool.map(self.train_job, pending), strict=True))
        paths = [trained.get(id(job), job.result) for job in jobs]
        for job, path in zip(jobs, paths, strict=True):
            seconds = json.loads(path.read_text(encoding="utf-8")).get("wall_seconds")
            if isinstance(seconds, (int, float)):
                self.seconds_per_run[job.head] = max(self.seconds_per_run.get(job.head, 0.0), float(seconds))
        return paths

    def recorded(self, job: RunJob) -> bool:
        """Whether ``job.result`` records this exact run (then it is not trained again).

        A full-precision record made on another kind of CPU (``numeric_kind``) is not this run: its
        numbers reproduce only there. With ``any_cpu`` it counts as done, so that one sweep can be
        spread over machines of several kinds (each record keeps the hardware it ran on).
        """
        if not job.result.is_file():
            return False
        record = json.loads(job.result.read_text())
        # seed runs keep their per-example predictions (the report's paired intervals need them)
        seed_run = "rate-search" not in job.result.parts
        if record.get("run_hash") != run_hash(job.config) or ("predictions" not in record and seed_run):
            return False
        if not same_data_files(record.get("dataset") or {}, data_fingerprint(job.config)):
            return False  # a data file was edited in place: same settings, other data
        recorded_on, here = numeric_kind(record.get("hardware") or {}), numeric_kind()
        if recorded_on != here and not self.any_cpu:
            self.report(
                f"poolft sweep: {job.result} was recorded on {recorded_on}, this machine is {here}; full-precision "
                "numbers differ between CPU kinds, so it runs again here (--any-cpu counts it as done)"
            )
            return False
        if any(record.get(key) != value for key, value in job.extra.items()):
            # same run, but the rate search around it grew (e.g. a wider grid): record that
            write_json(job.result, {**record, **job.extra})
        self.report(f"poolft sweep: skip {job.result} (already done)")
        return True

    def train_job(self, job: RunJob) -> Path:
        """Train ``job`` (resuming an interrupted run in its folder) and write its record."""
        from ..training.loop import train

        config, output_dir, head, seed = job.config, job.output_dir, job.head, job.seed
        identity = run_hash(config)
        seed_run = "rate-search" not in job.result.parts
        if job.result.is_file():  # the record of a run with other settings or data: kept beside, not overwritten
            aside = set_aside(job.result)
            self.report(
                f"poolft sweep: {job.result} recorded a run of other settings, data or CPU kind; moved it to {aside}"
            )
            if (output_dir / "metrics.json").is_file():  # that record's finished run folder goes with it
                aside = set_aside(output_dir)
                self.report(f"poolft sweep: moved its finished run folder {output_dir} to {aside}")
        if (output_dir / CONFIG_FILE).is_file() and holds_other_run(config, output_dir):
            # a run of other settings (e.g. left by an older poolft): kept, not resumed
            state = "a finished" if (output_dir / "metrics.json").is_file() else "an unfinished"
            aside = set_aside(output_dir)
            self.report(f"poolft sweep: {output_dir} held {state} run with other settings; moved it to {aside}")
        if (output_dir / CONFIG_FILE).is_file() or (output_dir / "head_warmup").is_dir():
            config.train.resume_from_checkpoint = "latest"
            if (output_dir / "metrics.json").is_file():  # finished, but its result was not written
                config.train.overwrite_output_dir = True
                config.train.resume_from_checkpoint = None
        self.report(f"poolft sweep: run {head} seed {seed} -> {output_dir}")
        metrics = train(config)
        record = {
            "task": self.task,
            "track": self.track,
            "head": head,
            "pooler": config.model.pooler if not config.model.stock_head else STOCK,
            "pooler_options": config.model.pooler_options,
            "stock_head": head == STOCK,
            "seed": seed,
            **job.extra,
            "backbone": {
                "path": self.base.model.backbone,
                "resolved": self.backbone,
                "sha256": weights_digest(self.backbone),
            },
            "dataset": {**metrics["data"], **data_fingerprint(config)},
            "hyperparameters": config.to_dict(),
            "train_size": metrics["train_size"],
            "eval_size": metrics["eval_size"],
            "epochs": config.train.epochs,
            "max_steps": config.train.max_steps,
            "final": metrics["final"],
            "best": metrics["best"],
            "train_samples_per_second": metrics["train_samples_per_second"],
            "wall_seconds": metrics["wall_seconds"],
            "mixed_precision": metrics["mixed_precision"],
            "hardware": metrics["hardware"],
            "software": metrics["software"],
            "curve": learning_curve(output_dir),
            "precision_identity": this_machine_precision(config),
            "run_hash": identity,
        }
        if "head_warmup" in metrics:
            record["head_warmup"] = metrics["head_warmup"]
        examples_file = output_dir / PREDICTIONS_FILE
        if seed_run and examples_file.is_file():
            examples = json.loads(examples_file.read_text(encoding="utf-8"))
            record["predictions"] = recorded_predictions(examples)
        write_json(job.result, record)
        return job.result


#: the most labels a multi-label row can have to be stored as one uint16 label-set id
MAX_LABEL_SET_BITS = 16


def recorded_predictions(examples: dict[str, Any]) -> dict[str, str] | None:
    """A seed record's compact ``predictions`` from a run's ``eval_predictions.json``.

    Single-label rows store label ids. Multi-label rows (0/1 per label) store one id per row, the
    label set as a bitmask (bit i: label i), so that "prediction equals reference" is the row's
    exact match, the accuracy multi-label runs report; None for rows of more than 16 labels.
    """
    predicted, references = examples["predictions"], examples["references"]
    if predicted and isinstance(predicted[0], list):
        if len(predicted[0]) > MAX_LABEL_SET_BITS:
            return None
        predicted, references = ([label_set_id(row) for row in rows] for rows in (predicted, references))
        return {**encode_predictions(predicted, references, examples["split"]), "ids": "label-set bitmask"}
    return encode_predictions(predicted, references, examples["split"])


def label_set_id(row: list[float]) -> int:
    """A multi-hot row as an integer: bit i set when label i is on."""
    return sum(1 << index for index, value in enumerate(row) if value)


def next_rate(rates: list[float], best: float) -> float | None:
    """The rate one grid step beyond ``best`` when ``best`` is an end of the sorted grid ``rates``
    (the step is the ratio of its neighbour); None when ``best`` is inside the grid."""
    if len(rates) < 2 or rates[0] < best < rates[-1]:
        return None
    if best == rates[0]:
        return float(f"{best * rates[0] / rates[1]:.3g}")
    return float(f"{best * rates[-1] / rates[-2]:.3g}")


def parse_list(text: str, kind: type, option: str = "the list") -> list:
    """``"a,b"`` -> ``[kind(a), kind(b)]``; an item that is not a ``kind`` is a one-line error naming ``option``."""
    try:
        return [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        example = {int: "0,1,2", float: "1e-3,1e-2"}.get(kind, "a,b")
        raise PoolftError(
            f"{option} {text!r} is not a comma-separated list of {kind.__name__}s; write it like {example}"
        ) from None


def parse_rates(text: str | None, default: str = "") -> list[float]:
    """``--rates``: ``None`` (not given) is ``default``; given, it must list at least one positive rate."""
    if text is None:
        return parse_list(default, float)
    items = [item.strip() for item in text.split(",")]
    rates = parse_list(text, float, "--rates") if all(items) else []
    if not rates or any(not (math.isfinite(rate) and rate > 0) for rate in rates):
        raise PoolftError(
            f"--rates {text!r} must list one or more positive finite rates, e.g. 1e-3,1e-2 (or leave it out)"
        )
    if len(set(rates)) < len(rates):
        raise PoolftError(f"--rates {text!r} lists a rate twice; give each candidate once")
    return rates


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; an empty list or a negative seed is a one-line error."""
    seeds = parse_list(text, int, "--seeds")
    if not seeds or any(not 0 <= seed < 2**32 for seed in seeds):
        raise PoolftError(f"--seeds {text!r} must list one or more seeds in [0, 2**32), e.g. 0,1,2")
    if len(set(seeds)) < len(seeds):
        raise PoolftError(f"--seeds {text!r} lists a seed twice; give each seed once (a repeat is no new sample)")
    return seeds


def track_of(config: RunConfig) -> str:
    """``probe`` (cached frozen states), ``finetune-lpft`` (head warmup first) or ``finetune``."""
    if config.train.feature_cache:
        return "probe"
    return "finetune-lpft" if config.train.head_warmup_epochs > 0 else "finetune"


def run_sweep(
    config_path: str,
    heads: str,
    seeds: str,
    rates: str | None,
    track: str | None,
    task: str | None,
    results_dir: str,
    runs_dir: str,
    holdout: float,
    overrides: list[str],
    grid_extensions: int = 2,
    workers: int = 1,
    any_cpu: bool = False,
) -> list[Path]:
    """The ``poolft sweep`` command; ``workers`` runs train at once (see ``RunPool``)."""
    base = load_config(config_path, overrides)
    head_names = parse_list(heads, str, "--poolers")
    unknown = [h for h in head_names if h not in known_heads()]
    if unknown:
        raise PoolftError(f"unknown head(s) {', '.join(unknown)}; choose from {', '.join(known_heads())}")
    track = track or track_of(base)
    if track != track_of(base):
        raise PoolftError(
            f"--track {track} does not match the config, which is a {track_of(base)} run; the probe track needs "
            "train.feature_cache: true (and freeze_backbone), finetune-lpft needs train.head_warmup_epochs > 0"
        )
    rate_key = "train.head_learning_rate" if track == "probe" else "train.learning_rate"
    if task is not None and (not task.strip() or task in (".", "..") or any(sep in task for sep in "/\\")):
        raise PoolftError(
            f"--task {task!r} must be a plain name (no / or ..): it names a folder under --results and --runs"
        )
    task = task or Path(config_path).parent.name
    sweep = Sweep(
        base,
        task,
        track,
        head_names,
        parse_seeds(seeds),
        parse_rates(rates),
        rate_key,
        holdout,
        Path(results_dir),
        Path(runs_dir),
        grid_extensions=grid_extensions,
        any_cpu=any_cpu,
    )
    folders = {"--results": Path(results_dir), "--runs": Path(runs_dir)}
    for option, folder in folders.items():  # both checked before either is made
        existing = next(path for path in (folder, *folder.parents) if path.exists() or path == path.parent)
        if existing.exists() and not existing.is_dir():
            raise PoolftError(f"{option} {folder}: {existing} is a file, not a folder; choose another path")
    for option, folder in folders.items():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # e.g. no permission
            raise PoolftError(f"{option} {folder} cannot be made ({error.strerror}); choose another path") from None
    with RunPool(workers, prepare=sweep.cache_builder()) as pool:  # RunPool checks workers
        return sweep.run(pool)
