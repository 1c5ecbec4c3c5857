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
from ..training.loop import PREDICTIONS_FILE
from ..training.run_folder import CONFIG_FILE, holds_other_run, set_aside, write_json
from .significance import encode_predictions

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
    """Identity of a run: every setting except where it writes, whether it writes the final model,
    how it reports progress and how long it waits for other processes, with ``mixed_precision``
    resolved on this machine.

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


def head_config(base: RunConfig, head: str, track: str, backbone_is_text: bool) -> RunConfig:
    """The base config with ``head`` as pooler (``stock`` = the stock Hugging Face head)."""
    config = copy.deepcopy(base)
    if head == STOCK:
        if track == "probe":
            # the stock heads on cached states: BERT's CLS + pretrained dense+tanh, ViT's CLS token
            config.model.pooler, config.model.pooler_options = "cls", {"dense": backbone_is_text}
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
        grid_extensions: int = 2,
    ) -> None:
        self.base, self.task, self.track = base, task, track
        self.grid_extensions = grid_extensions
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
        search: dict[str, float] = {}
        for rate in self.rates:
            search[f"{rate:g}"] = self.held_out_accuracy(head, rate)
        # a best rate at an end of the grid may not be the best: extend the grid past it
        for _ in range(self.grid_extensions):
            rates = sorted(float(r) for r in search)
            best = max(search, key=lambda r: (search[r], -float(r)))
            step = next_rate(rates, float(best))
            if step is None or len(rates) < 2:
                break
            neighbour = rates[1] if float(best) == rates[0] else rates[-2]
            if search[best] <= search[f"{neighbour:g}"]:
                break  # tied with the rate inside the grid: the end says nothing about going further
            self.report(f"poolft sweep: {head}: best rate {best} is at the end of the grid; trying {step:g}")
            search[f"{step:g}"] = self.held_out_accuracy(head, step)
        best = max(search, key=lambda r: (search[r], -float(r)))
        self.report(f"poolft sweep: {head}: held-out accuracy by {self.rate_key} {search} -> {best}")
        return float(best), search

    def held_out_accuracy(self, head: str, rate: float) -> float:
        """Accuracy on the held-out share of the training split, trained at ``rate`` (seed 0)."""
        config = head_config(self.base, head, self.track, self.is_text)
        config = with_overrides(config, {self.rate_key: rate, "data.holdout_fraction": self.holdout, "train.seed": 0})
        result = self.run_once(
            config,
            self.results / "rate-search" / f"{head}-rate{rate:g}.json",
            self.runs / "rate-search" / f"{head}-rate{rate:g}",
            head,
            0,
            {},
        )
        return json.loads(result.read_text())["final"]["accuracy"]

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
        # seed runs keep their per-example predictions (the report's paired intervals need them)
        seed_run = "rate-search" not in result.parts
        if result.is_file():
            record = json.loads(result.read_text())
            if record.get("run_hash") == identity and ("predictions" in record or not seed_run):
                if any(record.get(key) != value for key, value in extra.items()):
                    # same run, but the rate search around it grew (e.g. a wider grid): record that
                    write_json(result, {**record, **extra})
                self.report(f"poolft sweep: skip {result} (already done)")
                return result
        if (output_dir / CONFIG_FILE).is_file() and holds_other_run(config, output_dir):
            # an unfinished run of other settings (e.g. left by an older poolft): kept, not resumed
            aside = set_aside(output_dir)
            self.report(f"poolft sweep: {output_dir} held an unfinished run with other settings; moved it to {aside}")
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
            "precision_identity": this_machine_precision(config),
            "run_hash": identity,
        }
        if "head_warmup" in metrics:
            record["head_warmup"] = metrics["head_warmup"]
        examples_file = output_dir / PREDICTIONS_FILE
        if seed_run and examples_file.is_file():
            examples = json.loads(examples_file.read_text(encoding="utf-8"))
            multi_label = bool(examples["predictions"]) and isinstance(examples["predictions"][0], list)
            # the paired bootstrap compares label ids; multi-label rows (0/1 lists) have no interval yet
            record["predictions"] = (
                None
                if multi_label
                else encode_predictions(examples["predictions"], examples["references"], examples["split"])
            )
        write_json(result, record)
        return result


def next_rate(rates: list[float], best: float) -> float | None:
    """The rate one grid step beyond ``best`` when ``best`` is an end of the sorted grid ``rates``
    (the step is the ratio of its neighbour); None when ``best`` is inside the grid."""
    if len(rates) < 2 or rates[0] < best < rates[-1]:
        return None
    if best == rates[0]:
        return float(f"{best * rates[0] / rates[1]:.3g}")
    return float(f"{best * rates[-1] / rates[-2]:.3g}")


def parse_list(text: str, kind: type) -> list:
    try:
        return [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise PoolftError(f"cannot read {text!r} as a comma-separated list of {kind.__name__}") from None


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; an empty list or a negative seed is a one-line error."""
    seeds = parse_list(text, int)
    if not seeds or any(not 0 <= seed < 2**32 for seed in seeds):
        raise PoolftError(f"--seeds {text!r} must list one or more seeds in [0, 2**32), e.g. 0,1,2")
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
) -> list[Path]:
    """The ``poolft sweep`` command."""
    base = load_config(config_path, overrides)
    head_names = parse_list(heads, str)
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
    task = task or Path(config_path).parent.name
    sweep = Sweep(
        base,
        task,
        track,
        head_names,
        parse_seeds(seeds),
        parse_list(rates or "", float),
        rate_key,
        holdout,
        Path(results_dir),
        Path(runs_dir),
        grid_extensions=grid_extensions,
    )
    return sweep.run()
