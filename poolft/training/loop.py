"""The training loop: one Accelerate loop for text and images, readable top to bottom.

``train(config)`` builds the data and model, prepares them with Accelerate, then runs the
canonical loop (``accumulate`` -> ``backward`` -> clip -> step) with evaluation, checkpoints and
logging as small helpers. It runs unchanged on one process, under ``torchrun`` or ``accelerate
launch``; ``train.batch_size`` is the global batch, split across processes.

Exact rule on N processes: every global batch is cut into N shares by ``ShardedBatches``
(``poolft/data/sampling.py``); a short batch's shares are filled with weight-0 copies. A share
whose global batch is whole uses the model's own (mean) loss; otherwise its loss is
``N / real_rows * sum(loss of its real rows)``, so DDP's gradient average is the gradient of the
mean loss over the global batch's real rows: the same optimiser step as one process, each row once
per epoch. Evaluation gathers every share and keeps the real rows, so each sample counts once.
"""

from __future__ import annotations

import atexit
import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import RunConfig, config_to_yaml
from ..data.images import processor_for_image_size, processor_size
from ..data.inputs import encode_split, example_lengths, make_collator
from ..data.labels import MULTI_LABEL
from ..data.sampling import (
    BATCH_ROWS,
    ROW_WEIGHTS,
    FixedBatches,
    KeyedRows,
    ShardedBatches,
    ShuffledBatchSampler,
    WeightedCollator,
    length_sorted_batches,
)
from ..data.sources import HeldOutRows, load_splits
from ..errors import PoolftError
from ..metrics import classification_metrics, multi_label_metrics
from ..models import backbones, lora
from ..models.model_card import model_card
from ..models.modeling import PoolftPreTrainedModel, per_example_loss
from ..models.saved_models import load_head
from .averaging import averaged_weights, build_ema
from .checkpoints import CHECKPOINT_DIR, TrainerState, load_checkpoint, resolve_checkpoint, save_checkpoint
from .clipping import clipped_optimizer_step, zero_gradients
from .compilation import (
    CompileStats,
    compile_in_place,
    compile_limits,
    eager_forward,
    graph_budget,
    mark_token_axis_dynamic,
    settle_problem_type,
)
from .cpu_dropout import use_cpu_dropout
from .fault_injection import maybe_fail
from .feature_cache import CachedStatesCollator, HeadOnCachedStates, cached_loader_inputs, check_cache_root
from .optim import build_optimizer, build_scheduler, freeze_backbone
from .run_folder import (
    CONFIG_FILE,
    clear_output_dir,
    lock_run_folder,
    missing_folders,
    prepare_output_dir,
    release_run_folders,
    remove_empty_folders,
    save_model_atomically,
    write_atomically,
    write_json,
)
from .run_info import bf16_supported, hardware, peak_memory_mb, software

LOG_FILE = "log.jsonl"
PREDICTIONS_FILE = "eval_predictions.json"  # label ids of the latest evaluation, in the split's row order


@dataclass
class RunInputs:
    """What a run trains on: the model, its preprocessor and the encoded splits."""

    model: Any
    preprocessor: Any
    train_set: Any
    eval_set: Any
    label_names: list[str]
    task: str
    backbone: str
    data_description: dict[str, Any]
    # the probe track trains a head-only module on cached states; ``model`` is still what is saved
    trainable: Any = None
    cached: bool = False
    # rate search: both splits are rows of one encoded training split (the probe caches it once)
    holdout: HeldOutRows | None = None
    # the evaluation split's row index of each row in evaluation-loader order (per-example predictions)
    eval_order: list[int] | None = None
    # several labels per example: multi-hot ``labels``, sigmoid outputs, BCE loss
    multi_label: bool = False

    @property
    def module_to_train(self) -> Any:
        return self.trainable if self.trainable is not None else self.model


def resolve_mixed_precision(requested: str) -> str:
    """``auto`` -> bf16 where the hardware runs it fast, else full precision."""
    if requested != "auto":
        return requested
    return "bf16" if bf16_supported() else "no"


def has_accelerator() -> bool:
    """A CUDA, XPU or MPS device is present (else multi-process runs use MULTI_CPU / gloo)."""
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available()) or bool(mps and mps.is_available())


def build_accelerator(config: RunConfig) -> Accelerator:
    train = config.train
    # several runs in one process (sweeps, tests): forget the previous run's precision and
    # accumulation settings but keep the process group
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    if train.distributed_timeout_seconds <= 0:
        raise PoolftError(
            f"train.distributed_timeout_seconds={train.distributed_timeout_seconds} must be positive; "
            "give the seconds a process waits for the others before the run fails (default 1800)"
        )
    # the process group is created once per process (a sweep's later runs reuse it). Not through
    # InitProcessGroupKwargs: its to_kwargs() drops a timeout equal to its NCCL default (600 s).
    PartialState(cpu=not has_accelerator(), timeout=timedelta(seconds=train.distributed_timeout_seconds))
    atexit.register(PartialState().destroy_process_group)  # a no-op once destroyed, so repeats are harmless
    try:
        accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(train.mixed_precision),
            gradient_accumulation_steps=train.gradient_accumulation_steps,
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            # encoders hold parameters a pooled classifier never reaches (DINOv2's mask token, CLIP's
            # post-layernorm, SigLIP's attention head, layers above model.hidden_layers): DDP must skip them
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
            log_with=train.trackers or None,
            # without a GPU, torchrun/accelerate launch processes must be told to use gloo on CPU
            cpu=not has_accelerator(),
        )
    except (ValueError, ImportError) as error:
        raise PoolftError(
            f"cannot set up Accelerate ({str(error).splitlines()[0]}); check train.mixed_precision / trackers"
        ) from None
    return accelerator


def shared_on_main(accelerator: Accelerator, function: Any) -> Any:
    """Run ``function`` on the main process and give its result (or its PoolftError) to all."""
    payload = [None, None]
    if accelerator.is_main_process:
        try:
            payload = [function(), None]
        except PoolftError as error:
            payload = [None, str(error)]
    if accelerator.num_processes > 1:
        broadcast_object_list(payload)
    if payload[1] is not None:
        raise PoolftError(payload[1])
    return payload[0]


def on_main_first(accelerator: Accelerator, function: Any) -> Any:
    """``function()`` on the main process, then on the others (which reuse what it cached), like
    Accelerate's ``main_process_first``; a PoolftError on any process is raised on every one.

    With ``main_process_first`` a mistake found on the main process (a missing data file, say) left
    the others waiting at its barrier until the main process exited, and they died with a gloo
    traceback; here each process learns the outcome and stops with the same one line.
    """
    if accelerator.num_processes == 1:
        return function()

    def outcome() -> tuple[Any, str | None]:
        try:
            return function(), None
        except PoolftError as error:
            return None, str(error)

    result, error = outcome() if accelerator.is_main_process else (None, None)
    payload = [error]
    broadcast_object_list(payload)  # the main process's outcome, before the others start
    if payload[0] is not None:
        raise PoolftError(payload[0])
    if not accelerator.is_main_process:
        result, error = outcome()
    problem = next((problem for problem in gather_object([error]) if problem is not None), None)
    if problem is not None:
        raise PoolftError(problem)
    return result


@dataclass
class PreparedData:
    """A run's data stage: the loaded splits, the backbone's preprocessor and the encoded splits."""

    splits: Any  # ``load_splits``' result: task, label names, description, multi_label
    preprocessor: Any
    train_set: Any
    eval_set: Any
    holdout: HeldOutRows | None


def prepare_data(config: RunConfig, backbone: str, backbone_config: Any) -> PreparedData:
    """Load, check and encode ``config``'s splits for ``backbone`` (text tokenized, images decoded and sized).

    Every data mistake a run can meet surfaces here as a ``PoolftError``, before a model is built: so
    ``poolft compare`` calls it before its first run. The encoded splits sit in the ``datasets`` cache,
    and a run of the same data reuses them. ``config.data`` takes the text column(s) chosen from the data.
    """
    splits = load_splits(config.data)
    config.data = splits.data  # text column(s) chosen from the data: config.yaml records them
    check_metric_for_best(config.train.metric_for_best, splits.multi_label)
    backbones.check_modality(backbone, backbone_config, splits.task)
    preprocessor = backbones.load_preprocessor(backbone, splits.task, config.model)
    if splits.task == "image":
        # saved with the model, so predict/eval/pipeline resize and crop as training did
        preprocessor = processor_for_image_size(preprocessor, config.data.image_size)
        backbones.check_image_fits(backbone, backbone_config, processor_size(preprocessor))
        backbones.fill_patch_grid(config.model, backbone_config, processor_size(preprocessor))
    if splits.task == "text":
        from ..data.text import check_max_length

        backbones.check_tokenizer(backbone, preprocessor, backbone_config)
        check_max_length(config.data, preprocessor, backbones.max_positions(backbone_config))
        # saved with the model, so predict/eval/pipeline(truncation=True) truncate as training does
        preprocessor.model_max_length = config.data.max_length
    holdout = splits.holdout
    if holdout is not None:
        # encode the whole training split once (shared with the full-split runs), then select rows
        encoded = encode_split(holdout.source, preprocessor, splits.task, config.data, config.data.train_split)
        holdout = HeldOutRows(encoded, holdout.train_rows, holdout.eval_rows)
        train_set, eval_set = encoded.select(holdout.train_rows), encoded.select(holdout.eval_rows)
    else:
        train_set = encode_split(splits.train, preprocessor, splits.task, config.data, config.data.train_split)
        eval_set = encode_split(splits.eval, preprocessor, splits.task, config.data, config.data.eval_split)
    return PreparedData(splits, preprocessor, train_set, eval_set, holdout)


def load_run_inputs(config: RunConfig, accelerator: Accelerator, head_from: str | None = None) -> RunInputs:
    """Data, preprocessor and model for ``config`` (main process tokenizes first, others reuse the cache)."""
    backbones.check_pooler(config.model)
    backbone = backbones.resolve_backbone(config.model.backbone)
    backbone_config = backbones.load_backbone_config(backbone, config.model)
    data = on_main_first(accelerator, lambda: prepare_data(config, backbone, backbone_config))
    splits, preprocessor, holdout = data.splits, data.preprocessor, data.holdout
    train_set, eval_set = data.train_set, data.eval_set
    problem_type = MULTI_LABEL if splits.multi_label else None
    model = backbones.build_model(
        backbone, splits.task, config.model, splits.label_names, config.data.image_size, problem_type=problem_type
    )
    head_from = head_from or config.model.head_from
    if head_from is not None:  # LP-FT: the head starts where a probe run left it
        load_head(model, head_from, splits.label_names)
    if config.model.gradient_checkpointing:
        backbones.use_gradient_checkpointing(model)
    if config.model.lora is not None:  # last: the head (and head_from's weights) go into modules_to_save as they are
        model = lora.apply_lora(model, config.model.lora, backbone, config.model.revision)
    return RunInputs(
        model,
        preprocessor,
        train_set,
        eval_set,
        splits.label_names,
        splits.task,
        backbone,
        splits.description,
        holdout=holdout,
        multi_label=splits.multi_label,
    )


#: ``train.metric_for_best`` values that only multi-label evaluation reports
MULTI_LABEL_METRICS = ("micro_f1", "exact_match")


def check_metric_for_best(metric: str, multi_label: bool) -> None:
    """A multi-label metric asked for on single-label data is a one-line error."""
    if metric in MULTI_LABEL_METRICS and not multi_label:
        raise PoolftError(
            f"train.metric_for_best={metric} is a multi-label metric but the data has one label per row; "
            "use accuracy, macro_f1 or loss"
        )


def takes_label_smoothing(model: Any, label_smoothing: float) -> bool:
    """Give a poolft model ``label_smoothing``; whether the model's own loss is then the training loss.

    False for a stock head with smoothing: its forward computes the plain loss, so the loop leaves
    its labels out and ``share_loss`` computes the smoothed loss from the logits.
    """
    if isinstance(model, PoolftPreTrainedModel):
        model.label_smoothing = label_smoothing  # an attribute, not config: the saved model is unchanged
        return True
    return label_smoothing == 0


def without_labels(batch: dict[str, Any]) -> dict[str, Any]:
    """The model inputs of ``batch``: a model given no labels computes no loss."""
    return {key: value for key, value in batch.items() if key != "labels"}


def run_lengths(inputs: RunInputs) -> tuple[list[int] | None, list[int] | None]:
    """Per-example token counts of both splits (None for images)."""
    if inputs.cached:
        if inputs.task != "text":
            return None, None
        return inputs.train_set.lengths(), inputs.eval_set.lengths()
    return example_lengths(inputs.train_set, inputs.task), example_lengths(inputs.eval_set, inputs.task)


def run_collator(
    inputs: RunInputs, *, augment: bool, pad_to_multiple_of: int | None = None, max_length: int | None = None
) -> Any:
    if inputs.cached:
        return CachedStatesCollator()
    return make_collator(
        inputs.preprocessor, inputs.task, augment=augment, pad_to_multiple_of=pad_to_multiple_of, max_length=max_length
    )


def use_feature_cache(config: RunConfig, inputs: RunInputs, accelerator: Accelerator) -> None:
    """Probe track: swap the splits for cached frozen-backbone states and train the head alone."""
    if config.data.augment:
        raise PoolftError("data.augment cannot be used with train.feature_cache (states are computed once)")
    if config.model.stock_head:  # the cache runs poolft's encoder -> pooler split, which stock models lack
        raise PoolftError("train.feature_cache trains a poolft head on cached states; drop model.stock_head or it")
    collator = make_collator(inputs.preprocessor, inputs.task)
    precision = resolve_mixed_precision(config.train.mixed_precision)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    inputs.model.to(accelerator.device)
    # rate search: one cache for the whole training split (the full-split runs reuse it), viewed by rows
    splits = (inputs.holdout.source,) if inputs.holdout is not None else (inputs.train_set, inputs.eval_set)
    lengths = tuple(example_lengths(split, inputs.task) for split in splits)
    caches = on_main_first(
        accelerator,
        lambda: cached_loader_inputs(
            inputs.model,
            splits,
            collator,
            inputs.task,
            lengths,
            config.train.feature_cache_dir,
            config.train.feature_cache_dtype,
            inputs.preprocessor,
            autocast_dtype,
        ),
    )
    if inputs.holdout is not None:
        train_states = caches[0].rows(inputs.holdout.train_rows)
        eval_states = caches[0].rows(inputs.holdout.eval_rows)
    else:
        train_states, eval_states = caches
    inputs.train_set, inputs.eval_set = train_states, eval_states
    inputs.trainable = HeadOnCachedStates(inputs.model, train_states.meta)
    inputs.cached = True


def build_feature_caches(config: RunConfig) -> None:
    """Compute (or find) the cached backbone states a probe run of ``config`` reads, without training.

    A sweep calls it before its runs fan out to worker processes, so the backbone passes once, on
    every core, and the workers only read the cache. Nothing is written to ``train.output_dir``.

    Raises:
        PoolftError: as ``train`` would for the same config (bad data, a head the cache cannot train).
    """
    accelerator = build_accelerator(config)
    inputs = load_run_inputs(config, accelerator)
    if config.train.fast_kernels:  # as a run does before splitting off its head
        use_cpu_dropout(inputs.model)
    use_feature_cache(config, inputs, accelerator)


def set_train_mode(model: Any, config: RunConfig) -> None:
    """Training mode, except a frozen backbone, which runs like at inference (no dropout)."""
    model.train()
    inner = accelerator_free(model)
    encoder = getattr(inner, getattr(inner, "base_model_prefix", "encoder"), None)
    if config.train.freeze_backbone and encoder is not None:
        encoder.eval()


def accelerator_free(model: Any) -> Any:
    """The module under a DDP wrapper, if any."""
    return getattr(model, "module", model)


def sharded_loader(
    dataset: Any, batches: Any, collate: Any, num_processes: int, *, num_workers: int = 0, seed: int = 0
) -> DataLoader:
    """A loader of ``batches`` (a batch sampler) whose global batches ``ShardedBatches`` cuts into shares.

    Prepare it with ``split_batches=True``: process ``r`` then reads share ``r`` of every batch,
    with ``row_weights`` and ``batch_rows`` beside the model inputs.
    """
    return DataLoader(
        KeyedRows(dataset),
        batch_sampler=ShardedBatches(batches, num_processes),
        collate_fn=WeightedCollator(collate),
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


def make_loaders(
    config: RunConfig, inputs: RunInputs, num_processes: int
) -> tuple[DataLoader, DataLoader, ShuffledBatchSampler]:
    """Training loader (seeded, length-grouped batches) and evaluation loader (length-sorted)."""
    train_lengths, eval_lengths = run_lengths(inputs)
    train_sampler = ShuffledBatchSampler(
        train_lengths,
        len(inputs.train_set),
        config.train.batch_size,
        seed=config.train.seed,
        group_by_length=config.data.group_by_length,
    )
    eval_lengths = eval_lengths or [0] * len(inputs.eval_set)
    eval_batches = FixedBatches(length_sorted_batches(eval_lengths, config.train.eval_batch_size))
    common = {"num_workers": config.data.num_workers, "seed": config.train.seed}
    multiple, max_length = config.data.pad_to_multiple_of, config.data.max_length
    train_collator = run_collator(
        inputs, augment=config.data.augment, pad_to_multiple_of=multiple, max_length=max_length
    )
    train_loader = sharded_loader(inputs.train_set, train_sampler, train_collator, num_processes, **common)
    eval_collator = run_collator(inputs, augment=False, pad_to_multiple_of=multiple, max_length=max_length)
    eval_loader = sharded_loader(inputs.eval_set, eval_batches, eval_collator, num_processes, **common)
    return train_loader, eval_loader, train_sampler


def share_loss(
    outputs: Any,
    batch: dict[str, Any],
    weights: torch.Tensor,
    batch_rows: int,
    num_processes: int,
    *,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """This process's loss: DDP's average of its gradients is the mean-loss gradient of the global batch.

    ``weights`` ``(share,)`` marks real rows (1) and fillers (0); ``batch_rows`` counts the real rows
    of the global batch. A whole global batch keeps the model's own loss (so one process is
    unchanged); otherwise, or when the model computed none (a stock head with label smoothing), the
    per-row loss of the real rows (``per_example_loss``: the cross-entropy transformers computes for
    single-label classification, BCE averaged over the labels for multi-hot labels, both smoothed by
    ``label_smoothing``), summed, times ``num_processes / batch_rows``: for a whole batch, their mean.
    """
    if batch_rows == weights.numel() * num_processes and outputs.loss is not None:
        return outputs.loss
    per_row = per_example_loss(outputs.logits, batch["labels"], label_smoothing=label_smoothing)
    # where, not a product: a filler copy's NaN must not leak into the sum
    return torch.where(weights > 0, per_row, 0.0).sum() * (num_processes / batch_rows)


def evaluate_model(
    model: Any, loader: DataLoader, accelerator: Accelerator, *, order: list[int] | None = None
) -> dict[str, Any]:
    """Accuracy, macro-F1 and loss over the whole loader; each sample counted once across processes.

    Multi-hot labels (multi-label data) are predicted where ``sigmoid(logits) > 0.5`` and scored with
    micro-F1, macro-F1 and exact match (also as ``accuracy``, the subset accuracy); the loss is the
    plain cross-entropy or BCE (no label smoothing), so runs compare on it. ``order`` lists the
    split's row index of each real row in loader order (the evaluation batches, concatenated); given
    it, ``predictions`` and ``references`` (label ids, or 0/1 rows for multi-label, in the split's row
    order) are added, for paired comparisons between runs on the same split.
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    predictions, references, losses = [], [], []
    with torch.no_grad():
        for batch in loader:
            weights = batch.pop(ROW_WEIGHTS)
            batch.pop(BATCH_ROWS)
            logits, labels = model(**without_labels(batch)).logits.float(), batch["labels"]
            loss = per_example_loss(logits, labels)
            multi_label = labels.is_floating_point()
            predicted = (logits.sigmoid() > 0.5).long() if multi_label else logits.argmax(dim=-1)
            # every share has the same size: gather all of them, then keep the real rows only
            gathered = accelerator.gather((predicted, labels.long(), loss, weights))
            real = gathered[3] > 0
            predictions.append(gathered[0][real].cpu())
            references.append(gathered[1][real].cpu())
            losses.append(gathered[2][real].float().cpu())
    for module, training in modes.items():  # back to the caller's modes (a frozen encoder stays in eval)
        module.training = training
    predictions_all, references_all = torch.cat(predictions), torch.cat(references)
    if references_all.dim() == 2:
        metrics = multi_label_metrics(predictions_all.tolist(), references_all.tolist())
    else:
        metrics = classification_metrics(predictions_all.tolist(), references_all.tolist())
    metrics["loss"] = float(torch.cat(losses).mean())
    metrics["samples"] = len(references_all)
    if order is not None:
        if len(order) != len(references_all):
            raise ValueError(f"order has {len(order)} rows but the loader gave {len(references_all)}")
        by_row = torch.empty_like(predictions_all), torch.empty_like(references_all)
        index = torch.tensor(order, dtype=torch.long)
        by_row[0][index], by_row[1][index] = predictions_all, references_all
        metrics["predictions"], metrics["references"] = by_row[0].tolist(), by_row[1].tolist()
    return metrics


def is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


def default_output_dir(config: RunConfig) -> str:
    head = "stock" if config.model.stock_head else config.model.pooler
    return str(Path("runs") / f"{head}-{datetime.now():%Y%m%d-%H%M%S}")


class StepLog:
    """Appends one JSON line per optimiser step (main process) and feeds the trackers.

    A run that starts at ``start_step`` (a resume; 0 for a start from the beginning) first drops the
    lines an interrupted run wrote after that step, and a half-written last line: the steps after
    the checkpoint run again, and each step keeps one record.
    """

    def __init__(self, path: Path, accelerator: Accelerator, start_step: int = 0) -> None:
        self.accelerator = accelerator
        self.stream = None
        if accelerator.is_main_process:
            if path.is_file():
                write_atomically(path, "".join(f"{line}\n" for line in log_lines_up_to(path, start_step)))
            self.stream = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self.stream is not None:
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()
        if self.accelerator.trackers:
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(numbers, step=record["step"])

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


def log_lines_up_to(path: Path, step: int) -> list[str]:
    """The complete JSON lines of the log at ``path`` whose ``step`` is at most ``step``."""
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a run killed while writing it
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    return kept


def train(config: RunConfig) -> dict[str, Any]:
    """Run one training job; returns the metrics written to ``metrics.json``."""
    threads = torch.get_num_threads()
    budget = graph_budget(config.data.max_length, config.data.pad_to_multiple_of)
    limits = compile_limits(budget) if config.train.compile else nullcontext()
    try:
        with limits:
            if config.train.head_warmup_epochs > 0:
                from .lpft import train_lpft

                return train_lpft(config)
            return run_training(config)
    finally:
        torch.set_num_threads(threads)  # train.torch_threads is this run's setting, not the process's
        release_run_folders()


def run_training(config: RunConfig, *, warmed_head: str | None = None) -> dict[str, Any]:
    """One run; ``warmed_head`` (LP-FT's second stage) is the folder of the head trained first, inside
    ``output_dir``, which ``train_lpft`` has already checked and which an overwrite keeps."""
    started = time.perf_counter()
    accelerator = build_accelerator(config)
    if config.train.feature_cache:
        check_cache_root(config.train.feature_cache_dir)  # before the run writes anything
    if config.train.output_dir is None:
        config.train.output_dir = shared_on_main(accelerator, lambda: default_output_dir(config))
    made = missing_folders(Path(config.train.output_dir))  # a mistake found while loading leaves none of them
    if warmed_head is None:
        output_dir = Path(shared_on_main(accelerator, lambda: str(prepare_output_dir(config, clear=False))))
    else:
        output_dir = Path(config.train.output_dir)
    shared_on_main(accelerator, lambda: lock_run_folder(output_dir))  # a second run on the folder stops here
    set_seed(config.train.seed)
    try:
        inputs = load_run_inputs(config, accelerator, head_from=warmed_head)
    except PoolftError:
        if accelerator.is_main_process:
            remove_empty_folders(made)
        raise
    if config.train.overwrite_output_dir:  # only now: a mistake found while loading loses no earlier run
        keep = (Path(warmed_head).name,) if warmed_head is not None else ()
        shared_on_main(accelerator, lambda: clear_output_dir(output_dir, keep=keep))
    if accelerator.is_main_process:
        write_atomically(output_dir / CONFIG_FILE, config_to_yaml(config))
    if config.train.freeze_backbone:
        freeze_backbone(inputs.model)
    if config.train.fast_kernels:  # before a probe head is split off the model, so it shares the layers
        use_cpu_dropout(inputs.model)
    if config.train.feature_cache:
        use_feature_cache(config, inputs, accelerator)  # the backbone pass uses every core
    if config.train.torch_threads:
        torch.set_num_threads(config.train.torch_threads)
    own_loss = takes_label_smoothing(inputs.model, config.train.label_smoothing)
    model = inputs.module_to_train
    train_loader, eval_loader, train_sampler = make_loaders(config, inputs, accelerator.num_processes)
    inputs.eval_order = [row for batch in eval_loader.batch_sampler.batches for row in batch]
    steps_per_epoch = math.ceil(len(train_loader) / config.train.gradient_accumulation_steps)
    total_steps = config.train.max_steps or math.ceil(config.train.epochs * steps_per_epoch)
    optimizer = build_optimizer(model, config.train)
    scheduler = build_scheduler(optimizer, config.train, total_steps)
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler
    )
    if config.train.trackers:
        accelerator.init_trackers("poolft", config=flat_config(config))

    ema = build_ema(accelerator_free(model), config.train.ema_decay) if config.train.ema_decay else None
    compile_stats = None
    if config.train.compile:  # after build_ema copies the module: the average is never called
        settle_problem_type(inputs.model.config, inputs.multi_label)
        compile_in_place(accelerator_free(model))
        compile_stats = CompileStats()
    dynamic_tokens = config.train.compile and inputs.task == "text" and not inputs.cached
    state = TrainerState()
    if config.train.resume_from_checkpoint:
        state = resume(accelerator, output_dir, config.train.resume_from_checkpoint, ema) or state
        accelerator.step = state.accumulate_calls

    log = StepLog(output_dir / LOG_FILE, accelerator, start_step=state.global_step)
    progress = tqdm(
        total=total_steps,
        initial=state.global_step,
        desc="train",
        disable=not (accelerator.is_local_main_process and config.train.progress),
        dynamic_ncols=True,
    )
    set_train_mode(model, config)
    window_start, window_samples, window_loss, window_batches = time.perf_counter(), 0, 0.0, 0
    while state.global_step < total_steps and not state.stopped_early:
        # Accelerate's loader passes its own iteration count to the sampler: align it with the
        # real epoch, or a resumed run would replay epoch 0's order
        train_loader.set_epoch(state.epoch)
        train_sampler.set_epoch(state.epoch)
        loader = train_loader
        if state.batches_in_epoch:
            loader = accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
        step_started = time.perf_counter()
        for batch in loader:
            weights, batch_rows = batch.pop(ROW_WEIGHTS), batch.pop(BATCH_ROWS)
            if dynamic_tokens:  # train.compile: one graph for every batch length
                mark_token_axis_dynamic(batch)
            batch_started, graphs_before = time.perf_counter(), CompileStats.compiled_graphs()
            with accelerator.accumulate(model):
                outputs = model(**batch) if own_loss else model(**without_labels(batch))
                loss = share_loss(
                    outputs,
                    batch,
                    weights,
                    batch_rows,
                    accelerator.num_processes,
                    label_smoothing=config.train.label_smoothing,
                )
                mean_loss = accelerator.reduce(loss.detach(), reduction="mean")
                finite = bool(torch.isfinite(mean_loss))
                if finite:
                    accelerator.backward(loss)
                maybe_fail("step", state.global_step + 1)
                grad_norm = None
                if finite:
                    if accelerator.sync_gradients and config.train.max_grad_norm > 0:
                        grad_norm = clipped_optimizer_step(
                            accelerator, model, optimizer, config.train.max_grad_norm, fold=config.train.fast_kernels
                        )
                    else:
                        optimizer.step()
                    scheduler.step()
                zero_gradients(accelerator, optimizer)
            if compile_stats is not None:
                compile_stats.count_step(graphs_before, batch_started, batch_rows)
            if not finite:
                handle_nonfinite(config, state, output_dir)
            state.batches_in_epoch += 1
            state.accumulate_calls += 1
            state.samples_seen += batch_rows  # real rows only: fillers are not samples
            window_samples += batch_rows
            window_loss += float(mean_loss) if finite else 0.0
            window_batches += 1 if finite else 0
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            if ema is not None:
                ema.update_parameters(accelerator_free(model))
            now = time.perf_counter()
            state.train_seconds += now - step_started
            record = {
                "step": state.global_step,
                "epoch": state.epoch + state.batches_in_epoch / max(len(train_loader), 1),
                "loss": window_loss / window_batches if window_batches else None,
                **learning_rates(optimizer),
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "samples_per_second": window_samples / max(now - window_start, 1e-9),
            }
            log.write(record)
            progress.update(1)
            if state.global_step % config.train.log_every_steps == 0 or state.global_step == 1:
                progress.set_postfix(
                    loss=f"{record['loss'] or float('nan'):.4f}",
                    lr=f"{record['lr']:.2e}",
                    sps=f"{record['samples_per_second']:.1f}",
                )
            window_start, window_samples, window_loss, window_batches = now, 0, 0.0, 0
            every = config.train.eval_every_steps
            if every and state.global_step % every == 0:
                run_evaluation(config, accelerator, model, eval_loader, inputs, state, output_dir, log, ema)
            save_every = config.train.save_every_steps
            if save_every and state.global_step % save_every == 0 and state.global_step < total_steps:
                save_checkpoint(accelerator, output_dir, state, config.train.save_total_limit, ema=ema)
            if state.global_step >= total_steps or state.stopped_early:
                break
            step_started = time.perf_counter()
        else:  # the epoch ran out
            state.epoch += 1
            state.batches_in_epoch = 0
            if config.train.eval_every_epoch:
                run_evaluation(config, accelerator, model, eval_loader, inputs, state, output_dir, log, ema)
            if state.global_step < total_steps and not state.stopped_early:
                save_checkpoint(accelerator, output_dir, state, config.train.save_total_limit, ema=ema)
            continue
        break
    progress.close()

    if state.last_metrics.get("step") != state.global_step:
        run_evaluation(config, accelerator, model, eval_loader, inputs, state, output_dir, log, ema)
    if config.train.save_at_end:
        save_checkpoint(accelerator, output_dir, state, config.train.save_total_limit, ema=ema)
    metrics = run_summary(config, inputs, state, started, accelerator, len(train_loader), compile_stats)
    if accelerator.is_main_process:
        if config.train.save_model:
            card = model_card(config, metrics, inputs.label_names, inputs.task)
            with averaged_weights(ema, accelerator_free(model)):  # train.ema_decay: the average is the model
                save_model_atomically(
                    saveable(accelerator, model, inputs), inputs.preprocessor, output_dir, {"README.md": card}
                )
            if config.train.merge_lora_at_end:  # a plain model beside the adapter, loadable without peft
                lora.export_merged(output_dir, output_dir / lora.MERGED_DIR, replace=True)
        write_json(output_dir / "metrics.json", metrics)
        if not config.train.save_model and not config.train.save_at_end:
            # a finished run that keeps no model keeps no copy of it in its epoch checkpoints either
            shutil.rmtree(output_dir / CHECKPOINT_DIR, ignore_errors=True)
    log.close()
    accelerator.wait_for_everyone()
    # not accelerator.end_training(): it destroys the process group, which the next run in this
    # process (a sweep's) reuses; the group is destroyed at exit (build_accelerator)
    for tracker in accelerator.trackers:
        tracker.finish()
    return metrics


def saveable(accelerator: Accelerator, model: Any, inputs: RunInputs) -> Any:
    """The full Hugging Face model to save (on the probe track it holds the trained head; with LoRA, its adapter)."""
    return lora.saveable(inputs.model if inputs.cached else accelerator.unwrap_model(model))


def resume(accelerator: Accelerator, output_dir: Path, request: str, ema: Any = None) -> TrainerState | None:
    """Load the requested checkpoint (and ``ema``'s average); ``latest`` with none saved yet starts from scratch."""
    report = accelerator.print
    folder = resolve_checkpoint(output_dir, request, report=report)
    if folder is None:
        report(f"poolft: no intact checkpoint in {output_dir}; starting from the beginning")
        return None
    report(f"poolft: resuming from {folder}")
    return load_checkpoint(accelerator, folder, ema=ema)


def handle_nonfinite(config: RunConfig, state: TrainerState, output_dir: Path) -> None:
    """Stop on a NaN/inf loss (the last checkpoint stays), or count the skipped step."""
    if config.train.nonfinite_loss == "skip":
        state.skipped_nonfinite_steps += 1
        return
    raise PoolftError(
        f"the loss became NaN/inf at step {state.global_step + 1}; lower train.learning_rate or use "
        f"train.mixed_precision=no (checkpoints in {output_dir / 'checkpoints'} are untouched), or set "
        "train.nonfinite_loss=skip"
    )


def run_evaluation(
    config: RunConfig,
    accelerator: Accelerator,
    model: Any,
    eval_loader: DataLoader,
    inputs: RunInputs,
    state: TrainerState,
    output_dir: Path,
    log: StepLog,
    ema: Any = None,
) -> None:
    """Evaluate, log, and keep the best model (by ``train.metric_for_best``) in ``output_dir/best``.

    With ``ema`` (``train.ema_decay``) the averaged weights are evaluated and kept; with
    ``train.early_stopping_patience`` the run is marked to stop (``state.stopped_early``).
    """
    with averaged_weights(ema, accelerator_free(model)), eager_forward(config.train.compile):
        metrics = evaluate_model(model, eval_loader, accelerator, order=inputs.eval_order)
    examples = {"split": config.data.eval_split, "step": state.global_step}
    examples.update((key, metrics.pop(key)) for key in ("predictions", "references") if key in metrics)
    if accelerator.is_main_process and "predictions" in examples:  # the latest evaluation's, per example
        write_atomically(output_dir / PREDICTIONS_FILE, json.dumps(examples) + "\n")
    maybe_fail("eval", state.global_step)
    metrics["step"] = state.global_step
    state.last_metrics = metrics
    log.write({"step": state.global_step, **{f"eval_{k}": v for k, v in metrics.items() if k != "step"}})
    accelerator.print(
        f"poolft: step {state.global_step} eval accuracy {metrics['accuracy']:.4f} "
        f"macro_f1 {metrics['macro_f1']:.4f} loss {metrics['loss']:.4f} ({metrics['samples']} samples)"
    )
    key = config.train.metric_for_best
    improved = is_better(key, metrics[key], state.best_metric)
    if improved:
        state.best_metric, state.best_step, state.best_metrics = metrics[key], state.global_step, metrics
        if accelerator.is_main_process and config.train.save_best_model:
            with averaged_weights(ema, accelerator_free(model)):
                save_model_atomically(
                    saveable(accelerator, model, inputs), inputs.preprocessor, output_dir / "best", {}
                )
    check_early_stopping(config, accelerator, state, improved, log)
    accelerator.wait_for_everyone()


def check_early_stopping(
    config: RunConfig, accelerator: Accelerator, state: TrainerState, improved: bool, log: StepLog
) -> None:
    """Count evaluations without a better ``metric_for_best``; at ``early_stopping_patience`` of them, stop.

    An evaluation of a step already counted (the epoch's end after an ``eval_every_steps`` one) is not
    counted again. Every process computes the same gathered metrics, so all of them reach the same
    decision at the same step and leave the loop together. The count is trainer state: a resumed
    run continues it.
    """
    patience = config.train.early_stopping_patience
    if patience is None or state.counted_evaluation_step == state.global_step:  # the same weights again
        return
    state.counted_evaluation_step = state.global_step
    state.evaluations_without_improvement = 0 if improved else state.evaluations_without_improvement + 1
    if state.evaluations_without_improvement < patience:
        return
    key = config.train.metric_for_best
    state.stopped_early = {
        "step": state.global_step,
        "metric": key,
        "patience": patience,
        "best_metric": state.best_metric,
        "best_step": state.best_step,
    }
    log.write({"step": state.global_step, "stopped_early": state.stopped_early})
    accelerator.print(
        f"poolft: stopping early at step {state.global_step}: {key} has not improved for {patience} "
        f"evaluation(s) (best {state.best_metric:.4f} at step {state.best_step})"
    )


def run_summary(
    config: RunConfig,
    inputs: RunInputs,
    state: TrainerState,
    started: float,
    accelerator: Accelerator,
    batches_per_epoch: int,
    compile_stats: CompileStats | None = None,
) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    return {
        "final": state.last_metrics,
        "best": {**state.best_metrics, "metric": config.train.metric_for_best},
        "global_step": state.global_step,
        "epochs_completed": state.epoch + state.batches_in_epoch / max(batches_per_epoch, 1),
        "train_samples_seen": state.samples_seen,
        "train_seconds": state.train_seconds,
        "train_samples_per_second": state.samples_seen / state.train_seconds if state.train_seconds else None,
        "wall_seconds": time.perf_counter() - started,
        "skipped_nonfinite_steps": state.skipped_nonfinite_steps,
        # which weights were evaluated, kept in best/ and saved: the trained ones, or their average
        "weights": "ema" if config.train.ema_decay else "trained",
        # what the optimiser updates (LoRA: the adapters and the head; the probe track: the head)
        "trainable_parameters": sum(p.numel() for p in inputs.module_to_train.parameters() if p.requires_grad),
        "ema_decay": config.train.ema_decay,
        "stopped_early": state.stopped_early,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "task": inputs.task,
        "backbone": inputs.backbone,
        "head": backbones.describe_head(inputs.model),
        "label_names": inputs.label_names,
        "train_size": len(inputs.train_set),
        "eval_size": len(inputs.eval_set),
        "data": inputs.data_description,
        "hardware": hardware(),
        "software": software(),
        **peak_memory_mb(),
        "trainer_state": asdict(state),
        # train.compile: graphs compiled and the wall time of the steps that compiled them (in train_seconds)
        "compile": compile_stats.as_dict() if compile_stats is not None else None,
    }


def learning_rates(optimizer: Any) -> dict[str, float]:
    """``{"lr": backbone rate, "head_lr": head rate}`` read from the named parameter groups.

    With ``train.layer_decay`` the backbone has a rate per layer: ``lr`` is the highest (the top's).
    """
    rates: dict[str, float] = {}
    for group in optimizer.param_groups:
        kind = group["name"].split("-")[0]
        rates[kind] = max(rates.get(kind, 0.0), group["lr"])
    return {"lr": rates.get("backbone", 0.0), "head_lr": rates.get("head", 0.0)}


def flat_config(config: RunConfig) -> dict[str, Any]:
    """``{"train.learning_rate": ...}`` with scalar values only (for trackers' hparams)."""
    flat = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
