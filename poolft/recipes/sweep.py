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
from pathlib import Path
from typing import Any

from ..config import RunConfig, config_from_dict, load_config
from ..errors import PoolftError
from ..pooling import available_poolers
from ..training.feature_cache import weights_digest
from ..training.run_folder import write_json

STOCK = "stock"


# settings added after results were recorded, with the value that behaves as before they existed:
# left out of the identity at that value, so the recorded runs keep their hashes
ADDED_SETTINGS = {("train", "fast_kernels"): False}
# defaults changed after results were recorded: (new default, the value it is hashed as). An unset
# data.text_column is chosen from the data; the recorded runs had "sentence" there (the old
# default), which images ignore and which the SST-2 data's own choice is
CHANGED_DEFAULTS = {("data", "text_column"): (None, "sentence")}


def run_hash(config: RunConfig) -> str:
    """Identity of a run: every setting except where it writes, how it reports progress and how long
    it waits for other processes."""
    values = config.to_dict()
    run_keys = ("output_dir", "resume_from_checkpoint", "overwrite_output_dir", "progress")
    for key in (*run_keys, "distributed_timeout_seconds"):
        values["train"].pop(key, None)
    for (section, key), earlier_behaviour in ADDED_SETTINGS.items():
        if values[section].get(key) == earlier_behaviour:
            values[section].pop(key)
    for (section, key), (default, recorded_as) in CHANGED_DEFAULTS.items():
        if values[section].get(key) == default:
            values[section][key] = recorded_as
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def head_config(base: RunConfig, head: str, track: str, backbone_is_text: bool) -> RunConfig:
    """The base config with ``head`` as pooler (``stock`` = the stock Hugging Face head)."""
    config = copy.deepcopy(base)
    if head == STOCK:
        if track == "probe":
            # the stock heads on cached states: BERT's CLS + pretrained dense+tanh, ViT's CLS token
            config.model.pooler, config.model.pooler_options = "cls", {"dense": backbone_is_text}
        else:
            config.model.stock_head = True
    else:
        config.model.pooler = head
    return config


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
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else None
        described[split] = {"path": path, "sha256": digest}
    return {"files": described} if described else {"path": config.data.path, "name": config.data.name}


def learning_curve(output_dir: Path) -> list[dict[str, float]]:
    curve = []
    for line in (output_dir / "log.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "eval_accuracy" in record:
            curve.append({"step": record["step"], "accuracy": record["eval_accuracy"], "loss": record["eval_loss"]})
    return curve


class Sweep:
    """One recipe's grid: ``heads x seeds`` on ``track``, results in ``results_dir/task/track``."""

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
        report: Any = print,
    ) -> None:
        self.base, self.task, self.track = base, task, track
        self.heads, self.seeds, self.rates, self.rate_key, self.holdout = heads, seeds, rates, rate_key, holdout
        self.results = results_dir / task / track
        self.runs = runs_dir / task / track
        self.report = report
        from ..models.backbones import load_backbone_config, modality_of, resolve_backbone

        self.backbone = resolve_backbone(base.model.backbone)
        self.is_text = modality_of(load_backbone_config(self.backbone, base.model)) == "text"

    def run(self) -> list[Path]:
        written = []
        for head in self.heads:
            rate, search = self.choose_rate(head)
            for seed in self.seeds:
                written.append(self.run_seed(head, seed, rate, search))
        return written

    def choose_rate(self, head: str) -> tuple[float, dict[str, float]]:
        """Held-out accuracy of each candidate rate (seed 0); the best one is used for the seeds."""
        section, key = self.rate_key.split(".")
        if len(self.rates) <= 1:
            rate = self.rates[0] if self.rates else getattr(getattr(self.base, section), key)
            return rate, {}
        search = {}
        for rate in self.rates:
            config = head_config(self.base, head, self.track, self.is_text)
            config = with_overrides(
                config, {self.rate_key: rate, "data.holdout_fraction": self.holdout, "train.seed": 0}
            )
            result = self.run_once(
                config,
                self.results / "rate-search" / f"{head}-rate{rate:g}.json",
                self.runs / "rate-search" / f"{head}-rate{rate:g}",
                head,
                0,
                {},
            )
            search[f"{rate:g}"] = json.loads(result.read_text())["final"]["accuracy"]
        best = max(search, key=lambda r: (search[r], -float(r)))
        self.report(f"poolft sweep: {head}: held-out accuracy by {self.rate_key} {search} -> {best}")
        return float(best), search

    def run_seed(self, head: str, seed: int, rate: float, search: dict[str, float]) -> Path:
        config = head_config(self.base, head, self.track, self.is_text)
        config = with_overrides(config, {self.rate_key: rate, "train.seed": seed})
        return self.run_once(
            config,
            self.results / f"{head}-seed{seed}.json",
            self.runs / f"{head}-seed{seed}",
            head,
            seed,
            {
                "rate": rate,
                "rate_key": self.rate_key,
                "rate_search": search,
                "rate_search_holdout": self.holdout if search else None,
            },
        )

    def run_once(
        self, config: RunConfig, result: Path, output_dir: Path, head: str, seed: int, extra: dict[str, Any]
    ) -> Path:
        """Train unless ``result`` already records this exact run; resume an interrupted one."""
        from ..training.loop import train

        config.train.output_dir = str(output_dir)
        config.train.progress = False
        identity = run_hash(config)
        if result.is_file():
            record = json.loads(result.read_text())
            if record.get("run_hash") == identity:
                if any(record.get(key) != value for key, value in extra.items()):
                    # same run, but the rate search around it grew (e.g. a wider grid): record that
                    write_json(result, {**record, **extra})
                self.report(f"poolft sweep: skip {result} (already done)")
                return result
        if (output_dir / "config.yaml").is_file():
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
            **extra,
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
            "run_hash": identity,
        }
        write_json(result, record)
        return result


def parse_list(text: str, kind: type) -> list:
    try:
        return [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise PoolftError(f"cannot read {text!r} as a comma-separated list of {kind.__name__}") from None


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
) -> list[Path]:
    """The ``poolft sweep`` command."""
    base = load_config(config_path, overrides)
    head_names = parse_list(heads, str)
    unknown = [h for h in head_names if h != STOCK and h not in available_poolers()]
    if unknown:
        raise PoolftError(f"unknown head(s) {', '.join(unknown)}; choose from {', '.join(available_poolers())}, stock")
    track = track or ("probe" if base.train.feature_cache else "finetune")
    if track == "probe" and not base.train.feature_cache:
        raise PoolftError("--track probe needs train.feature_cache: true and train.freeze_backbone: true")
    rate_key = "train.head_learning_rate" if track == "probe" else "train.learning_rate"
    task = task or Path(config_path).parent.name
    sweep = Sweep(
        base,
        task,
        track,
        head_names,
        parse_list(seeds, int),
        parse_list(rates or "", float),
        rate_key,
        holdout,
        Path(results_dir),
        Path(runs_dir),
    )
    return sweep.run()
