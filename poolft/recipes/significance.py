"""Is one head really better than another? Paired bootstrap intervals and rank agreement.

Each seed record carries its per-example predictions (``encode_predictions``), so two heads
evaluated on the same split can be compared example by example: ``paired_bootstrap`` gives the
difference of their accuracies with a 95% percentile interval from resampling the examples (the
paired bootstrap of Koehn 2004 and Berg-Kirkpatrick et al. 2012, pooled over seeds), and
``best_and_tied`` names the best head and those within noise of it. ``kendall_tau`` measures how
well one track's ranking of the heads predicts another's.
"""

from __future__ import annotations

import base64
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 10_000
# resampled statistics drawn per chunk x distinct per-example differences: keeps memory ~32 MB
CHUNK_ELEMENTS = 4_000_000


def encode_predictions(predicted: list[int], references: list[int], split: str) -> dict[str, str]:
    """A record's ``"predictions"`` entry: label ids in the evaluation split's row order.

    Both arrays are stored little-endian as ``uint8`` when every id is below 256, else ``uint16``,
    and base64-encoded, so a 10,000-example split costs about 13 kB per array.
    """
    if len(predicted) != len(references):
        raise ValueError(f"{len(predicted)} predictions for {len(references)} references")
    ids = [*predicted, *references]
    if ids and min(ids) < 0:
        raise ValueError(f"label ids must be non-negative, got {min(ids)}")
    if ids and max(ids) >= 2**16:
        raise ValueError(f"label ids must be below 65536 to be stored as uint16, got {max(ids)}")
    dtype = "uint8" if not ids or max(ids) < 2**8 else "uint16"
    little_endian = np.dtype(dtype).newbyteorder("<")

    def encoded(values: list[int]) -> str:
        return base64.b64encode(np.asarray(values, dtype=little_endian).tobytes()).decode("ascii")

    return {"split": split, "dtype": dtype, "predicted": encoded(predicted), "references": encoded(references)}


def decode_predictions(record_predictions: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted, references)`` label ids, each ``(examples,)``, from a record's ``"predictions"``."""
    dtype = record_predictions["dtype"]
    if dtype not in ("uint8", "uint16"):
        raise ValueError(f"predictions dtype must be uint8 or uint16, got {dtype!r}")
    little_endian = np.dtype(dtype).newbyteorder("<")
    predicted, references = (
        np.frombuffer(base64.b64decode(record_predictions[key]), dtype=little_endian).astype(dtype)
        for key in ("predicted", "references")
    )
    if predicted.shape != references.shape:
        raise ValueError(f"{predicted.size} predictions for {references.size} references")
    return predicted, references


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of a minus accuracy of b (accuracy units, not points) with its percentile interval."""

    delta: float
    low: float
    high: float

    @property
    def within_noise(self) -> bool:
        """The interval contains 0: the data cannot tell the two apart."""
        return self.low <= 0.0 <= self.high


def seeds_by_examples(correct: np.ndarray | list, name: str) -> np.ndarray:
    """``correct`` as a ``(seeds, examples)`` float array of 0/1 (one seed may be given as 1-D)."""
    array = np.asarray(correct)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be (seeds, examples), got shape {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold 0/1 correctness only")
    return array.astype(np.float64)


def paired_bootstrap(
    correct_a: np.ndarray | list,
    correct_b: np.ndarray | list,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> PairedDifference:
    """Paired bootstrap of the accuracy difference a - b over the same examples.

    ``correct_a`` is ``(seeds_a, examples)`` and ``correct_b`` ``(seeds_b, examples)``, 0/1 per
    example; the seed counts may differ. Each example's difference is the mean over a's seeds minus
    the mean over b's seeds; Δ is their mean, and the interval is the ``level`` percentile interval
    of Δ over ``resamples`` resamplings of the examples with replacement (seeded, deterministic).

    Resampling n examples from the empirical distribution of the per-example differences is a
    multinomial draw over their distinct values (at most (seeds_a + 1) x (seeds_b + 1) of them), so
    the work and memory do not grow with the number of examples; draws are chunked anyway.
    """
    a, b = seeds_by_examples(correct_a, "correct_a"), seeds_by_examples(correct_b, "correct_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a paired comparison needs the same examples: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[1] == 0:
        raise ValueError("no examples to compare")
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples} and {level}")
    differences = a.mean(axis=0) - b.mean(axis=0)
    examples = differences.size
    # distinct differences in order of first appearance, so swapping a and b draws the same
    # counts and exactly negates every resampled statistic
    values, first, counts = np.unique(differences, return_index=True, return_counts=True)
    order = np.argsort(first)
    values, counts = values[order], counts[order]
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // values.size)
    statistics = np.empty(resamples)
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        drawn = rng.multinomial(examples, counts / examples, size=stop - start)
        statistics[start:stop] = drawn @ values / examples
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(statistics, tail), -np.quantile(-statistics, tail)  # mirror images of each other
    return PairedDifference(float(differences.mean()), float(low), float(high))


def best_and_tied(
    correct_by_head: dict[str, np.ndarray], **bootstrap: Any
) -> tuple[str, list[str], dict[str, PairedDifference]]:
    """The head with the highest mean accuracy, the heads within noise of it, and every interval.

    ``correct_by_head`` maps a head to its ``(seeds, examples)`` 0/1 correctness on one split;
    the first listed head wins an exact tie. ``intervals[head]`` is ``paired_bootstrap(head, best)``
    (so Δ <= 0), and a head is tied when that interval contains 0. ``bootstrap`` is passed on.
    """
    if not correct_by_head:
        raise ValueError("no heads to compare")
    accuracy = {head: seeds_by_examples(correct, head).mean() for head, correct in correct_by_head.items()}
    best = max(accuracy, key=accuracy.__getitem__)
    intervals = {
        head: paired_bootstrap(correct, correct_by_head[best], **bootstrap)
        for head, correct in correct_by_head.items()
        if head != best
    }
    tied = [head for head, interval in intervals.items() if interval.within_noise]
    return best, tied, intervals


def kendall_tau(x: list[float] | np.ndarray, y: list[float] | np.ndarray) -> float:
    """Kendall's τ-b of two paired sequences, ties allowed, by counting every pair (NaN if undefined).

    τ-b = (concordant - discordant) / sqrt((pairs - ties in x) * (pairs - ties in y)), where a pair
    tied in both counts in both tie counts.
    """
    if len(x) != len(y):
        raise ValueError(f"kendall_tau needs paired sequences, got {len(x)} and {len(y)} values")
    concordant = discordant = tied_x = tied_y = pairs = 0
    values = [(float(a), float(b)) for a, b in zip(x, y)]
    for (x1, y1), (x2, y2) in itertools.combinations(values, 2):
        pairs += 1
        sign = ((x1 > x2) - (x1 < x2)) * ((y1 > y2) - (y1 < y2))
        tied_x += x1 == x2
        tied_y += y1 == y2
        concordant += sign > 0
        discordant += sign < 0
    denominator = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return float((concordant - discordant) / denominator) if denominator else math.nan
