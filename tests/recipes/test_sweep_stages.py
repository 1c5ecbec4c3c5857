"""How a sweep hands its runs to the pool: stages without waits, longest runs first."""

from __future__ import annotations

import json

from poolft.config import load_config
from poolft.recipes.sweep import Sweep

#: held-out accuracy of (head, rate): max peaks inside its grid, mean at its top end (then falls)
ACCURACY = {
    ("max", 0.001): 0.6,
    ("max", 0.01): 0.8,
    ("max", 0.1): 0.7,
    ("mean", 0.001): 0.6,
    ("mean", 0.01): 0.7,
    ("mean", 0.1): 0.8,
    ("mean", 1.0): 0.5,
}
SECONDS = {"max": 5.0, "mean": 1.0}  # a max run takes longest


class RecordingPool:
    """Runs every job here and keeps each ``map`` call's jobs as (head, seed, rate, kind)."""

    workers = 2

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, int, float, str]]] = []

    def map(self, function, jobs):
        self.calls.append(
            [
                (
                    job.head,
                    job.seed,
                    job.config.train.head_learning_rate,
                    "rate" if "rate-search" in job.result.parts else "seed",
                )
                for job in jobs
            ]
        )
        return [function(job) for job in jobs]


def fake_train(job):
    rate = job.config.train.head_learning_rate
    job.result.parent.mkdir(parents=True, exist_ok=True)
    record = {"final": {"accuracy": ACCURACY[job.head, rate]}, "wall_seconds": SECONDS[job.head]}
    job.result.write_text(json.dumps(record))
    return job.result


def test_settled_heads_seed_runs_share_a_stage_with_the_grid_extensions_longest_first(tmp_path, tiny_bert_dir):
    base = load_config(None, [f"--model.backbone={tiny_bert_dir}"])
    sweep = Sweep(
        base,
        "task",
        "probe",
        ["mean", "max"],
        [0, 1],
        [0.001, 0.01, 0.1],
        "train.head_learning_rate",
        0.1,
        tmp_path / "results",
        tmp_path / "runs",
        report=lambda message: None,
    )
    sweep.train_job = fake_train
    pool = RecordingPool()
    paths = sweep.run(pool)
    assert pool.calls == [
        # the grid of every head, in the given order (no run times known yet)
        [("mean", 0, rate, "rate") for rate in (0.001, 0.01, 0.1)]
        + [("max", 0, rate, "rate") for rate in (0.001, 0.01, 0.1)],
        # max is settled at 0.01: its seed runs (the longest runs, first) go with mean's grid extension
        [("max", 0, 0.01, "seed"), ("max", 1, 0.01, "seed"), ("mean", 0, 1.0, "rate")],
        # the extension did not beat 0.1: mean's seed runs at 0.1
        [("mean", 0, 0.1, "seed"), ("mean", 1, 0.1, "seed")],
    ]
    assert [path.name for path in paths] == ["mean-seed0.json", "mean-seed1.json", "max-seed0.json", "max-seed1.json"]
