"""Paired bootstrap intervals, the best head and its ties, Kendall's τ-b, and the predictions encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from poolft.recipes.significance import (
    best_and_tied,
    decode_predictions,
    encode_predictions,
    kendall_tau,
    paired_bootstrap,
)


def test_identical_predictions_differ_by_exactly_zero():
    correct = (np.random.default_rng(0).random((3, 500)) < 0.7).astype(np.uint8)
    result = paired_bootstrap(correct, correct.copy())
    assert (result.delta, result.low, result.high) == (0.0, 0.0, 0.0)
    assert result.within_noise


def dominated_pair(examples: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """a right on 70% of the examples; b right wherever a is and on 10% of the examples more."""
    a = np.zeros(examples, dtype=np.uint8)
    a[: int(0.7 * examples)] = 1
    b = a.copy()
    b[int(0.7 * examples) : int(0.8 * examples)] = 1
    order = np.random.default_rng(1).permutation(examples)  # not sorted by outcome
    return a[order][None, :].repeat(3, axis=0), b[order][None, :].repeat(2, axis=0)


def test_clear_difference_matches_the_normal_interval_of_a_paired_difference():
    a, b = dominated_pair()
    result = paired_bootstrap(a, b)
    d = a.mean(axis=0) - b.mean(axis=0)  # -1 on 200 examples, 0 elsewhere
    half_width = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert result.delta == pytest.approx(-0.1, abs=1e-12)
    assert result.high < 0 and not result.within_noise
    assert result.low == pytest.approx(-0.1 - half_width, abs=1e-3)
    assert result.high == pytest.approx(-0.1 + half_width, abs=1e-3)


def test_swapping_the_heads_negates_the_interval():
    a, b = dominated_pair()
    forward, backward = paired_bootstrap(a, b), paired_bootstrap(b, a)
    assert (backward.delta, backward.low, backward.high) == (-forward.delta, -forward.high, -forward.low)


def test_heads_that_guess_at_random_are_usually_within_noise():
    rng = np.random.default_rng(7)
    contains_zero = [
        paired_bootstrap(rng.integers(0, 2, (3, 200)), rng.integers(0, 2, (3, 200)), resamples=2000).within_noise
        for _ in range(40)
    ]
    assert sum(contains_zero) >= 34  # ~95% expected


def test_bootstrap_is_deterministic_and_seeded():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 2, (3, 1000)), rng.integers(0, 2, (4, 1000))
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b)
    assert paired_bootstrap(a, b, seed=1) != paired_bootstrap(a, b)


def test_bootstrap_refuses_different_examples_and_non_binary_input():
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap(np.ones((3, 100)), np.ones((3, 101)))
    with pytest.raises(ValueError, match="0/1"):
        paired_bootstrap(np.full((1, 10), 0.5), np.ones((1, 10)))


def test_best_head_and_the_heads_within_noise_of_it():
    a, b = dominated_pair()
    also_best = b.copy()
    also_best[:, np.flatnonzero(b[0])[:2]] = 0  # two examples fewer: indistinguishable from b
    best, tied, intervals = best_and_tied({"a": a, "b": b, "b2": also_best})
    assert best == "b" and tied == ["b2"]
    assert set(intervals) == {"a", "b2"} and intervals["a"].high < 0 and intervals["b2"].within_noise


@pytest.mark.parametrize(
    "x, y",
    [
        ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]),
        ([1, 2, 2, 3, 3, 3], [1, 1, 2, 2, 3, 3]),
        ([0.8, 0.8, 0.7, 0.9], [0.6, 0.5, 0.5, 0.7]),
        ([1, 1, 1, 2], [1, 2, 2, 2]),
    ],
    ids=["reversed", "ties-both", "ties-floats", "heavy-ties"],
)
def test_kendall_tau_b_matches_scipy_on_tied_inputs(x, y):
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)


def test_kendall_tau_b_matches_scipy_on_random_inputs():
    rng = np.random.default_rng(0)
    for size in (3, 7, 12, 30):
        x, y = rng.integers(0, 5, size), rng.normal(size=size).round(1)
        assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)


def test_kendall_tau_is_undefined_for_a_constant_ranking():
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


@pytest.mark.parametrize("largest, dtype", [(255, "uint8"), (256, "uint16")])
def test_predictions_round_trip_in_the_smallest_dtype(largest, dtype):
    predicted, references = [0, largest, 3, 1], [0, 2, largest, 1]
    encoded = encode_predictions(predicted, references, "validation")
    assert encoded["split"] == "validation" and encoded["dtype"] == dtype
    decoded_predicted, decoded_references = decode_predictions(encoded)
    assert decoded_predicted.dtype == np.dtype(dtype) and decoded_predicted.tolist() == predicted
    assert decoded_references.tolist() == references
