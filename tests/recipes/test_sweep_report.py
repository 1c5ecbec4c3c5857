"""poolft sweep (grid, rate search, skip and resume), the probe cache, and poolft report."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from datasets_for_tests import write_sentiment_csv
from safetensors.torch import load_file

import poolft.training.loop
from poolft.cli import main
from poolft.config import load_config
from poolft.recipes.report import END, START, load_results, load_search_runs, render, write_report


def recipe(tmp_path, backbone, *, probe: bool) -> str:
    files = write_sentiment_csv(tmp_path / "data", train_size=96, eval_size=32)
    train = {
        "epochs": 1,
        "batch_size": 16,
        "mixed_precision": "no",
        "save_best_model": False,
        "save_at_end": False,
        "freeze_backbone": probe,
        "feature_cache": probe,
        "feature_cache_dir": str(tmp_path / "cache"),
    }
    config = {
        "model": {"backbone": str(backbone)},
        "data": {"data_files": files, "text_column": "text"},
        "train": train,
    }
    path = tmp_path / "tiny" / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))  # JSON is YAML
    return str(path)


def count_trainings(monkeypatch) -> list[str]:
    calls = []
    original = poolft.training.loop.train

    def counting(config):
        calls.append(config.train.output_dir)
        return original(config)

    monkeypatch.setattr(poolft.training.loop, "train", counting)
    return calls


def mean_probe_sweep(tmp_path, backbone, rates: list[float]):
    """A one-head (mean), one-seed probe sweep over ``rates`` whose messages are dropped."""
    from poolft.recipes.sweep import Sweep

    config = load_config(recipe(tmp_path, backbone, probe=True))
    return Sweep(
        config,
        "tiny",
        "probe",
        ["mean"],
        [0],
        rates,
        "train.head_learning_rate",
        0.1,
        tmp_path / "results",
        tmp_path / "runs",
        report=lambda message: None,
    )


def test_sweep_runs_grid_with_rate_search_then_skips_and_resumes(tmp_path, tiny_bert_dir, monkeypatch):
    config = recipe(tmp_path, tiny_bert_dir, probe=True)
    results, runs = tmp_path / "results", tmp_path / "runs"
    arguments = [
        "sweep",
        "--config",
        config,
        "--poolers",
        "mean,stock",
        "--seeds",
        "0,1",
        "--rates",
        "1e-3,1e-2",
        "--grid-extensions",
        "0",
        "--results",
        str(results),
        "--runs",
        str(runs),
    ]
    calls = count_trainings(monkeypatch)
    assert main(arguments) == 0
    assert len(calls) == 2 * 2 + 2 * 2  # rate search (2 rates) + 2 seeds, for 2 heads
    written = sorted(p.name for p in (results / "tiny" / "probe").glob("*.json"))
    assert written == ["mean-seed0.json", "mean-seed1.json", "stock-seed0.json", "stock-seed1.json"]
    record = json.loads((results / "tiny" / "probe" / "mean-seed1.json").read_text())
    assert record["seed"] == 1 and record["track"] == "probe" and record["pooler"] == "mean"
    assert set(record["rate_search"]) == {"0.001", "0.01"} and record["rate"] in (0.001, 0.01)
    assert record["hyperparameters"]["train"]["head_learning_rate"] == record["rate"]
    assert record["dataset"]["files"]["train"]["sha256"] and len(record["backbone"]["sha256"]) == 64
    assert record["final"]["samples"] == 32 and record["train_size"] == 96
    stock = json.loads((results / "tiny" / "probe" / "stock-seed0.json").read_text())
    assert stock["pooler_options"] == {"dense": True}  # BERT's own head on cached states

    calls.clear()
    assert main(arguments) == 0
    assert calls == []  # everything done: nothing re-runs

    (results / "tiny" / "probe" / "mean-seed1.json").unlink()
    assert main(arguments) == 0
    assert calls == [str(runs / "tiny" / "probe" / "mean-seed1")]  # only the missing run


def test_a_record_made_on_another_kind_of_cpu_runs_again_unless_any_cpu(tmp_path, tiny_bert_dir, monkeypatch, capsys):
    """fp32 rounding follows the CPU's vendor and matrix features: a record from another kind of CPU
    is not "already done" here (it is kept beside); ``--any-cpu`` counts it as done."""
    config = recipe(tmp_path, tiny_bert_dir, probe=True)
    results, runs = tmp_path / "results", tmp_path / "runs"
    arguments = ["sweep", "--config", config, "--poolers", "mean", "--seeds", "0", "--rates", "1e-2"]
    arguments += ["--results", str(results), "--runs", str(runs)]
    calls = count_trainings(monkeypatch)
    assert main(arguments) == 0 and len(calls) == 1  # one rate (no search), one seed
    seed_record = results / "tiny" / "probe" / "mean-seed0.json"
    elsewhere = json.loads(seed_record.read_text())
    # as a record written before cpu_vendor was kept: the vendor is read from the CPU's name
    del elsewhere["hardware"]["cpu_vendor"]
    elsewhere["hardware"].update(cpu="Elsewhere Corp. CPU", cpu_flags=["avx2", "elsewhere_isa"])  # never this machine
    seed_record.write_text(json.dumps(elsewhere))

    calls.clear()
    capsys.readouterr()
    assert main([*arguments, "--any-cpu"]) == 0
    assert calls == [] and "(already done)" in capsys.readouterr().out

    assert main(arguments) == 0
    assert calls == [str(runs / "tiny" / "probe" / "mean-seed0")]
    out = capsys.readouterr().out
    assert (
        "was recorded on cpu:unknown:avx2+elsewhere_isa, this machine is " in out
        and "--any-cpu counts it as done" in out
    )
    assert json.loads(seed_record.with_name("mean-seed0.json.replaced-1").read_text()) == elsewhere  # kept
    assert json.loads(seed_record.read_text())["hardware"]["cpu_vendor"]  # the new record names its vendor


def test_sweep_task_is_a_plain_name_and_seeds_are_distinct(tmp_path, tiny_bert_dir, capsys):
    config = recipe(tmp_path, tiny_bert_dir, probe=True)
    results, runs = tmp_path / "results", tmp_path / "runs"
    common = ["sweep", "--config", config, "--poolers", "mean", "--results", str(results), "--runs", str(runs)]
    (tmp_path / "a-file").write_text("mine\n")
    for extra, message in (
        (["--task", "../escape"], "--task '../escape' must be a plain name"),
        (["--task", ".."], "must be a plain name"),
        (["--seeds", "1,1"], "--seeds '1,1' lists a seed twice"),
        (["--results", str(tmp_path / "a-file")], "--results"),
        (["--runs", str(tmp_path / "a-file" / "runs")], "--runs"),
    ):
        assert main([*common, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "escape").exists() and (tmp_path / "a-file").read_text() == "mine\n"
    assert not results.exists() and not runs.exists()


def test_numeric_kind_reads_the_vendor_of_records_made_before_it_was_kept():
    from poolft.training.run_info import numeric_kind

    xeon = {"cpu": "Intel(R) Xeon(R) Processor", "cpu_flags": ["avx512f", "amx_tile", "avx2"]}
    assert numeric_kind(xeon) == "cpu:GenuineIntel:amx_tile+avx2+avx512f"
    epyc = {"cpu": "AMD EPYC", "cpu_vendor": "AuthenticAMD", "cpu_flags": ["avx2", "avx512f"]}
    assert numeric_kind(epyc) == "cpu:AuthenticAMD:avx2+avx512f"
    assert numeric_kind({**epyc, "gpu": "NVIDIA H100 80GB HBM3"}) == "cuda:NVIDIA H100 80GB HBM3"


def test_widened_rate_grid_reuses_finished_runs_and_records_the_new_search(tmp_path, tiny_bert_dir, monkeypatch):
    config = recipe(tmp_path, tiny_bert_dir, probe=True)
    results, runs = tmp_path / "results", tmp_path / "runs"

    def sweep(rates):
        common = ["--poolers", "mean", "--seeds", "0", "--results", str(results), "--runs", str(runs)]
        return main(["sweep", "--config", config, "--rates", rates, "--grid-extensions", "0", *common])

    calls = count_trainings(monkeypatch)
    assert sweep("1e-3,1e-2") == 0
    first = json.loads((results / "tiny" / "probe" / "mean-seed0.json").read_text())
    calls.clear()
    assert sweep("1e-3,1e-2,1e-1") == 0
    new_search = [c for c in calls if "rate-search" in c]
    assert new_search == [str(runs / "tiny" / "probe" / "rate-search" / "mean-rate0.1")]  # only the new rate
    record = json.loads((results / "tiny" / "probe" / "mean-seed0.json").read_text())
    assert set(record["rate_search"]) == {"0.001", "0.01", "0.1"}
    assert record["rate_search"]["0.001"] == first["rate_search"]["0.001"]


def test_rate_search_caches_the_training_split_once_for_search_and_seeds(tmp_path, tiny_bert_dir):
    config = recipe(tmp_path, tiny_bert_dir, probe=True)
    results, runs = tmp_path / "results", tmp_path / "runs"
    common = ["--poolers", "mean,max", "--seeds", "0", "--results", str(results), "--runs", str(runs)]
    assert main(["sweep", "--config", config, "--rates", "1e-3,1e-2", *common]) == 0
    # one backbone pass over the training split (search parts are row views of it) + the eval split
    folders = [p for p in (tmp_path / "cache").iterdir() if (p / "meta.json").is_file()]
    assert sorted(json.loads((p / "meta.json").read_text())["examples"] for p in folders) == [32, 96]
    search = json.loads((results / "tiny" / "probe" / "rate-search" / "mean-rate0.001.json").read_text())
    assert search["train_size"] == 86 and search["eval_size"] == 10  # 10% of 96 held out


def interrupt_at_step(monkeypatch, arguments: list[str], step: int) -> None:
    """Run ``poolft`` with ``arguments`` and stop it as Ctrl-C would, once training step ``step`` is logged."""
    original_write = poolft.training.loop.StepLog.write

    def crash(self, record):
        original_write(self, record)
        if record.get("step") == step and "loss" in record:
            raise KeyboardInterrupt

    monkeypatch.setattr(poolft.training.loop.StepLog, "write", crash)
    assert main(arguments) == 130
    monkeypatch.setattr(poolft.training.loop.StepLog, "write", original_write)


def test_sweep_resumes_an_interrupted_run(tmp_path, tiny_bert_dir, monkeypatch):
    config = recipe(tmp_path, tiny_bert_dir, probe=False)
    results, runs = tmp_path / "results", tmp_path / "runs"
    arguments = [
        "sweep",
        "--config",
        config,
        "--poolers",
        "max",
        "--seeds",
        "0",
        "--results",
        str(results),
        "--runs",
        str(runs),
        "--train.save_every_steps=2",
        "--train.epochs=2",
    ]
    folder = runs / "tiny" / "finetune" / "max-seed0"
    interrupt_at_step(monkeypatch, arguments, 5)
    assert logged_steps(folder) == [1, 2, 3, 4, 5] and (folder / "checkpoints" / "step-4").is_dir()
    assert main(arguments) == 0
    assert logged_steps(folder) == list(range(1, 13))  # resumed from step 4: step 5 ran again, logged once


def logged_steps(folder: Path) -> list[int]:
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [record["step"] for record in records if "loss" in record]


def test_an_unfinished_run_of_other_settings_is_moved_aside_not_resumed(tmp_path, tiny_bert_dir, monkeypatch, capsys):
    import yaml

    config = recipe(tmp_path, tiny_bert_dir, probe=False)
    results, runs = tmp_path / "results", tmp_path / "runs"
    arguments = ["sweep", "--config", config, "--poolers", "max", "--seeds", "0", "--results", str(results)]
    arguments += ["--runs", str(runs), "--train.save_every_steps=2"]
    interrupt_at_step(monkeypatch, arguments, 3)
    folder = runs / "tiny" / "finetune" / "max-seed0"
    # as an older poolft would have left it: a setting it did not have yet is missing from config.yaml
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    del saved["train"]["label_smoothing"]
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    old_files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))
    assert any(name.startswith("checkpoints/step-2") for name in old_files)
    capsys.readouterr()
    assert main(arguments) == 0
    aside = folder.with_name("max-seed0.replaced-1")
    assert sorted(str(path.relative_to(aside)) for path in aside.rglob("*")) == old_files  # nothing lost
    assert f"moved it to {aside}" in capsys.readouterr().out
    log = (folder / "log.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in log if "loss" in json.loads(line)]
    assert steps == list(range(1, 7))  # started again, not resumed
    assert (results / "tiny" / "finetune" / "max-seed0.json").is_file()


@pytest.mark.parametrize("holdout", [None, 0.25], ids=["full-split", "held-out-rows"])
def test_head_trained_on_cache_equals_head_trained_with_frozen_backbone(tmp_path, tiny_bert_dir, holdout):
    config_path = recipe(tmp_path, tiny_bert_dir, probe=True)
    weights = {}
    for cached in (True, False):
        config = load_config(
            config_path,
            [
                *([f"--data.holdout_fraction={holdout}"] if holdout else []),
                f"--train.output_dir={tmp_path / str(cached)}",
                "--train.epochs=2",
                "--model.pooler=attention",
                f"--train.feature_cache={str(cached).lower()}",
                "--train.feature_cache_dtype=float32",
                "--train.progress=false",
            ],
        )
        poolft.training.loop.train(config)
        weights[cached] = load_file(tmp_path / str(cached) / "model.safetensors")
    assert weights[True].keys() == weights[False].keys()
    for key in weights[True]:
        torch.testing.assert_close(weights[True][key], weights[False][key], rtol=1e-5, atol=1e-6, msg=key)
    head = [k for k in weights[True] if k.startswith(("pooler.", "classifier."))]
    assert head and any(not torch.equal(weights[True][k], torch.zeros_like(weights[True][k])) for k in head)


def fixture_result(task, track, head, seed, accuracy):
    return {
        "task": task,
        "track": track,
        "head": head,
        "pooler": head,
        "seed": seed,
        "rate": 1e-3,
        "rate_key": "train.learning_rate",
        "rate_search": {"0.001": 0.8, "0.0003": 0.7, "1e-05": 0.6},
        "rate_search_holdout": 0.1,
        "final": {"accuracy": accuracy, "macro_f1": accuracy - 0.01},
        "train_samples_per_second": 100.0 + seed,
        "wall_seconds": 60.0,
        "train_size": 2000,
        "eval_size": 872,
        "mixed_precision": "bf16",
        "backbone": {"path": "minilm", "sha256": "ab" * 32},
        "dataset": {"source": "files"},
        "hyperparameters": {
            "data": {
                "eval_split": "validation",
                "max_length": 64,
                "image_size": None,
                "holdout_fraction": None,
                "text_column": "sentence",
            },
            "train": {"epochs": 1, "batch_size": 32, "scheduler": "linear", "feature_cache": False},
        },
        "hardware": {"cpu": "Test CPU", "cpu_count": 2},
        "software": {"poolft_commit": "0123456789abcdef"},
        "curve": [
            {"step": 10, "accuracy": accuracy - 0.05, "loss": 0.5},
            {"step": 20, "accuracy": accuracy, "loss": 0.4},
        ],
    }


def test_report_tables_from_fixture_files(tmp_path):
    results = tmp_path / "results"
    values = {"stock": [0.80, 0.82, 0.81], "mean": [0.84, 0.85, 0.86], "cls": [0.79]}
    for head, accuracies in values.items():
        for seed, accuracy in enumerate(accuracies):
            path = results / "sst2" / "finetune" / f"{head}-seed{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(fixture_result("sst2", "finetune", head, seed, accuracy)))
    (results / "sst2" / "finetune" / "rate-search").mkdir()
    search = fixture_result("sst2", "finetune", "mean", 0, 0.5)  # counted in the cost, not in the table
    (results / "sst2" / "finetune" / "rate-search" / "mean-rate0.01.json").write_text(json.dumps(search))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\noutro\n")
    text = write_report(results, tmp_path / "recipes" / "README.md", readme)
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["| stock"].startswith("| stock | 81.00 ± 1.00 | 80.00 | 3 | — |")
    assert rows["| mean"].startswith("| mean | 85.00 ± 1.00 | 84.00 | 3 | +4.00 |")
    assert rows["| cls"].startswith("| cls | 79.00 | 78.00 | 1 | -2.00 |")  # one seed: no std
    assert list(rows) == ["| head", "| stock", "| cls", "| mean"]
    assert "over 1e-05, 0.0003, 0.001 on a 10% held-out share of the training split" in text
    assert "- Sweep cost: 7 seed runs + 1 rate-search runs, 8.0 min of run wall time in total" in text
    assert (tmp_path / "recipes" / "plots" / "sst2-finetune.png").stat().st_size > 1000
    refreshed = readme.read_text()
    assert refreshed.startswith("intro\n") and refreshed.endswith("outro\n") and "old" not in refreshed
    assert "| mean | 85.00 ± 1.00" in refreshed
    again = render(load_results(results), None, search_runs=load_search_runs(results))
    assert again == text  # the same files give the same bytes


def test_report_mistakes_are_one_line_and_overwrite_nothing(tmp_path, capsys):
    """A mistyped --results (missing, empty, a file) or an unreadable record used to write an empty
    report over the tables; now nothing is written. A new --output folder is made, and the README's
    link points at the report that was written."""
    results = tmp_path / "results"
    path = results / "sst2" / "finetune" / "stock-seed0.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(fixture_result("sst2", "finetune", "stock", 0, 0.8)))
    output, readme = tmp_path / "report" / "README.md", tmp_path / "README.md"
    output.parent.mkdir()
    output.write_text("the tables\n")
    readme.write_text(f"intro\n{START}\nthe headline\n{END}\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("mine\n")
    broken = tmp_path / "broken"
    shutil.copytree(results, broken)
    (broken / "sst2" / "finetune" / "mean-seed0.json").write_text("{ half a record")
    common = ["--output", str(output), "--readme", str(readme)]
    for arguments, message in (
        (["--results", str(tmp_path / "reslts")], "is not a folder"),
        (["--results", str(tmp_path / "empty")], "holds no .json records"),
        (["--results", str(tmp_path / "a-file")], "is not a folder"),
        (["--results", str(broken)], "cannot read record"),
        (["--results", str(results), "--output", str(tmp_path / "a-file" / "README.md")], "cannot be written"),
        (["--results", str(results), "--output", str(tmp_path / "report")], "is a folder"),
    ):
        assert main(["report", *common, *arguments]) == 2, arguments
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert output.read_text() == "the tables\n" and "the headline" in readme.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "a-file", "broken", "empty", "report", "results"]

    elsewhere = tmp_path / "new" / "folder" / "tables.md"
    assert main(["report", "--results", str(results), "--output", str(elsewhere), "--readme", str(readme)]) == 0
    assert elsewhere.is_file() and "[new/folder/tables.md](new/folder/tables.md)" in readme.read_text()
    plain = tmp_path / "plain.md"
    plain.write_text("no markers here\n")
    assert main(["report", "--results", str(results), "--output", str(elsewhere), "--readme", str(plain)]) == 0
    assert "has no <!-- poolft-report:start -->" in capsys.readouterr().out
    assert plain.read_text() == "no markers here\n"


def paired_fixture_records(examples: int = 2000) -> list[dict]:
    """finetune records with per-example predictions where the answer is known: cls predicts exactly
    as stock (70% right), mean is right wherever stock is and on 10% of the examples more, attention
    is mean with two examples fewer right (within noise of it), max has no predictions (an old record)."""
    import numpy as np

    from poolft.recipes.significance import encode_predictions

    rng = np.random.default_rng(0)
    references = rng.integers(0, 2, examples)
    order = rng.permutation(examples)
    right = {"stock": order < 0.7 * examples, "mean": order < 0.8 * examples}
    right["cls"] = right["stock"]
    right["attention"] = right["mean"] & (order >= 2)
    records = []
    for head, correct in right.items():
        predicted = np.where(correct, references, 1 - references)
        for seed in range(3):
            record = fixture_result("sst2", "finetune", head, seed, float(correct.mean()))
            record["predictions"] = encode_predictions(predicted.tolist(), references.tolist(), "validation")
            records.append(record)
    records += [fixture_result("sst2", "finetune", "max", seed, 0.75) for seed in range(3)]
    return records


def table_rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [cell.strip() for cell in cells] for cells in rows}


def test_report_shows_the_paired_bootstrap_interval_and_within_noise_mark():
    import math

    from poolft.recipes.report import headline, track_section

    records = paired_fixture_records()
    text = render(records, None)
    rows = table_rows(text)
    assert rows["head"][4:7] == ["Δ vs stock (points)", "95% CI (points)", "noise?"]
    assert rows["stock"][4:7] == ["—", "—", "—"]
    assert rows["cls"][4:7] == ["+0.00", "[+0.00, +0.00]", "within noise"]  # the same predictions
    assert rows["max"][4:7] == ["+5.00", "—", "—"]  # no predictions: Δ of the means, no interval
    assert rows["mean"][4] == "+10.00" and rows["mean"][6] == ""
    low, high = (float(v) for v in rows["mean"][5].strip("[]").split(", "))
    half_width = 100 * 1.96 * math.sqrt(0.1 * 0.9 / 2000)  # normal interval of the paired difference
    assert low == pytest.approx(10 - half_width, abs=0.1) and high == pytest.approx(10 + half_width, abs=0.1)
    assert "Best: **mean** (80.00%); ties not tested (per-example predictions are not recorded for every head)." in text
    with_predictions = [r for r in records if r["head"] != "max"]
    section = track_section(with_predictions)
    assert section[-1] == "Best: **mean** (80.00%); within noise of it (95% CI of Δ contains 0): attention."
    assert "\n".join(section) in render(with_predictions, None)  # the README block shows the same section
    assert "\n".join(section) in headline(with_predictions)
    assert render(records, None) == text  # the same records give the same bytes


def test_report_without_predictions_shows_dashes_and_flags_edge_rates_and_cpu_flags():
    records = [fixture_result("sst2", "finetune", head, 0, 0.8) for head in ("stock", "mean")]
    records[1]["rate_search"] = {"0.01": 0.7, "0.001": 0.8, "0.0001": 0.6}  # 1e-3 inside its grid
    for record in records:
        record["hardware"]["cpu_flags"] = ["avx512f", "amx_bf16", "avx2"]
    text = render(records, None)
    rows = table_rows(text)
    assert rows["mean"][4:8] == ["+0.00", "—", "—", "0.001"]
    assert rows["stock"][7] == "0.001 (edge)"  # the largest rate of 1e-05, 0.0003, 0.001
    assert "- Hardware: Test CPU (2 cores; flags amx_bf16 avx2 avx512f)" in text


def test_report_compares_the_probe_ranking_with_fine_tuning():
    accuracies = {"stock": 0.80, "cls": 0.70, "mean": 0.85, "max": 0.75}
    records = [fixture_result("sst2", "probe", head, 0, value) for head, value in accuracies.items()]
    tuned = {"stock": 0.90, "cls": 0.91, "mean": 0.95, "window": 0.5}  # max missing
    records += [fixture_result("sst2", "finetune", head, 0, value) for head, value in tuned.items()]
    records += [fixture_result("sst2", "finetune-lpft", head, 0, 0.9) for head in ("stock", "mean")]
    text = render(records, None)
    assert "## sst2 — how well the probe ranking predicts fine-tuning" in text
    # stock, cls, mean: probe order cls < stock < mean, finetune stock < cls < mean -> (2 - 1) / 3
    assert "- probe vs finetune: τ = 0.33 over 3 heads (stock, cls, mean)" in text
    assert "probe vs finetune-lpft" not in text  # 2 common heads: too few
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections == [
        "## sst2 — finetune",
        "## sst2 — finetune-lpft",
        "## sst2 — probe",
        "## sst2 — how well the probe ranking predicts fine-tuning",
    ]


@pytest.mark.parametrize("track", ["finetune", "probe"])
def test_committed_recipes_readme_matches_results(track):
    """recipes/README.md is exactly what `poolft report` makes of recipes/results."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    results = load_results(root / "recipes" / "results")
    committed = (root / "recipes" / "README.md").read_text(encoding="utf-8")
    assert render(results, None, search_runs=load_search_runs(root / "recipes" / "results")) == committed
    tracks = {r["track"] for r in results}
    if track in tracks:  # every head of a recorded track has at least 3 seeds
        heads = {}
        for result in results:
            if result["track"] == track:
                heads.setdefault((result["task"], result["head"]), set()).add(result["seed"])
        assert all(len(seeds) >= 3 for seeds in heads.values()), heads


def test_run_hash_of_recorded_runs_survives_the_fast_kernels_setting() -> None:
    import hashlib

    from poolft.config import RunConfig
    from poolft.recipes.sweep import ADDED_SETTINGS, run_hash

    # the identity a run had before train.fast_kernels existed: the same settings without that key
    config = RunConfig()
    config.train.fast_kernels = False
    values = config.to_dict()
    for key in ("output_dir", "resume_from_checkpoint", "overwrite_output_dir", "progress"):
        values["train"].pop(key)
    for section, key in ADDED_SETTINGS:  # fast_kernels and every later setting, at its off value
        values[section].pop(key)
    values["train"].pop("distributed_timeout_seconds", None)  # not part of a run's identity
    values["train"].pop("save_model")  # nor whether the final model is written (added later)
    values["data"]["text_column"] = "sentence"  # the default then; unset now means "chosen from the data"
    before = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    assert run_hash(config, "no") == before  # recorded in full precision, as every v1 run was
    config.train.save_model = False  # the same training, its model not written: the same run
    assert run_hash(config, "no") == before
    config.train.feature_cache_dir = "/elsewhere/features"  # the same states, cached in another folder
    assert run_hash(config, "no") == before
    config.train.fast_kernels = True  # a different training step: a different run
    assert run_hash(config, "no") != before


def test_run_identity_holds_the_resolved_precision_and_the_cpu_matrix_features(monkeypatch) -> None:
    """`auto` is bf16 on an AMX CPU: not the same run as the fp32 one recorded elsewhere."""
    import poolft.training.loop as loop
    import poolft.training.run_info as run_info
    from poolft.config import RunConfig
    from poolft.recipes.sweep import run_hash

    config = RunConfig()
    monkeypatch.setattr(run_info, "cpu_flags", lambda: {"avx2", "avx512f", "fma"})
    monkeypatch.setattr(loop, "bf16_supported", lambda: False)
    no_amx = run_hash(config)
    assert no_amx == run_hash(config, "no")  # auto -> fp32 here: the full-precision identity
    config.train.mixed_precision = "no"
    assert run_hash(config) == no_amx  # pinned fp32 is the same run

    monkeypatch.setattr(run_info, "cpu_flags", lambda: {"avx2", "avx512f", "amx_bf16", "amx_tile", "fma"})
    monkeypatch.setattr(loop, "bf16_supported", lambda: True)
    assert run_hash(config) == no_amx  # still pinned to fp32: reproduces on the AMX machine
    config.train.mixed_precision = "auto"
    amx_auto = run_hash(config)
    assert amx_auto != no_amx  # auto is bf16 here
    assert run_info.precision_identity("bf16") == "bf16@cpu:amx_bf16+amx_tile+avx2+avx512f"
    monkeypatch.setattr(run_info, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    config.train.mixed_precision = "bf16"
    assert run_hash(config) not in (amx_auto, no_amx)  # bf16 without AMX rounds otherwise


@pytest.mark.parametrize("record_root", ["recipes/archive/v1", "recipes"], ids=["v1-archive", "v2"])
def test_every_recorded_result_is_recognised_as_done(record_root) -> None:
    """`poolft sweep` skips a run whose result file holds the run_hash of the config it would run.

    Rebuild each recorded run's config from its recipe as the sweep does (head, rate, seed; the
    rate search's held-out share) and compare with the hash written when it ran, so a changed
    default (such as data.text_column, now chosen from the data) cannot silently re-run them. The
    precision identity is the record's (the machine it ran on), not this machine's.
    """
    from pathlib import Path

    from poolft.recipes.sweep import head_config, run_hash, with_overrides

    root = Path(__file__).resolve().parents[2]
    recipes = root / record_root
    from transformers import BertConfig, ViTConfig

    # task -> its backbone's family (MiniLM-L6 is a BERT; the image recipes' backbone a plain ViTModel)
    families = {"sst2": BertConfig(), "fashion_mnist": ViTConfig()}
    files = sorted((recipes / "results").rglob("*.json"))
    if record_root.endswith("v1"):
        assert len(files) >= 4 * 6 * 3  # 2 tasks x 2 tracks x 6 heads x 3 seeds, plus rate-search runs
    for path in files:
        record = json.loads(path.read_text(encoding="utf-8"))
        task, track = record["task"], record["track"]
        base = load_config(recipes / task / f"{track}.yaml")
        rate_key = "train.head_learning_rate" if track == "probe" else "train.learning_rate"
        config = head_config(base, record["head"], track, families[task])
        if path.parent.name == "rate-search":
            section, key = rate_key.split(".")
            hyper = record["hyperparameters"]
            updates = {rate_key: hyper[section][key], "data.holdout_fraction": hyper["data"]["holdout_fraction"]}
            config = with_overrides(config, {**updates, "train.seed": 0})
        else:
            config = with_overrides(config, {rate_key: record["rate"], "train.seed": record["seed"]})
        config.train.output_dir, config.train.progress = "anywhere", False
        precision = record.get("precision_identity") or {"no": "no"}[record["mixed_precision"]]
        assert run_hash(config, precision) == record["run_hash"], path.relative_to(root)
    image_recipe = load_config(recipes / "fashion_mnist" / "finetune.yaml")
    assert image_recipe.data.text_column is None  # the new default is what the image runs hash with
    image_recipe.data.text_column = "text"
    assert run_hash(image_recipe) != run_hash(load_config(recipes / "fashion_mnist" / "finetune.yaml"))


def test_rate_line_names_the_shared_grid_and_each_head_s_extension():
    from poolft.recipes.report import rate_line

    stock = fixture_result("sst2", "finetune", "stock", 0, 0.8)
    mean = fixture_result("sst2", "finetune", "mean", 0, 0.8)
    mean["rate_search"] = {**mean["rate_search"], "3e-06": 0.5}  # mean's best was 1e-05, an end: one more below
    line = rate_line(stock, {"stock": [stock], "mean": [mean]})
    assert "over 1e-05, 0.0003, 0.001 on a 10% held-out share" in line
    assert "grids extended past an end for mean 3e-06;" in line


def test_a_best_rate_at_an_end_of_the_grid_grows_the_grid(tmp_path, tiny_bert_dir, monkeypatch):
    from poolft.recipes.sweep import next_rate

    assert next_rate([1e-3, 1e-2], 1e-2) == 0.1 and next_rate([1e-3, 1e-2], 1e-3) == 1e-4
    assert next_rate([1e-3, 3e-3, 1e-2], 3e-3) is None and next_rate([1e-3], 1e-3) is None
    sweep = mean_probe_sweep(tmp_path, tiny_bert_dir, [1e-3, 1e-2])
    tried = []

    def held_out(runs, pool):  # held-out accuracy peaks at 0.3, beyond the grid
        tried.extend(rate for _, rate in runs)
        return [1.0 - abs(math.log10(rate / 0.3)) for _, rate in runs]

    monkeypatch.setattr(sweep, "held_out_accuracies", held_out)
    rate, search = sweep.choose_rate("mean")
    assert tried == [1e-3, 1e-2, 0.1, 1.0]  # two steps up the grid, the second one past the peak
    assert rate == 0.1 and set(search) == {"0.001", "0.01", "0.1", "1"}


def test_a_tie_at_the_end_of_the_grid_does_not_grow_it(tmp_path, tiny_bert_dir, monkeypatch):
    sweep = mean_probe_sweep(tmp_path, tiny_bert_dir, [1e-3, 1e-2, 1e-1])
    tried = []
    monkeypatch.setattr(sweep, "held_out_accuracies", lambda runs, pool: [tried.append(r) or 0.615 for _, r in runs])
    rate, search = sweep.choose_rate("mean")
    assert tried == [1e-3, 1e-2, 1e-1] and rate == 1e-3  # every rate tied: no evidence to go past 1e-3


def test_budget_line_says_steps_when_max_steps_ends_the_runs():
    from poolft.recipes.report import budget_lines

    by_epochs = fixture_result("sst2", "finetune", "stock", 0, 0.8)
    by_steps = fixture_result("sst2", "finetune", "stock", 0, 0.8)
    by_steps["hyperparameters"]["train"]["max_steps"] = 3
    assert "- Budget per run: 1 epoch(s), batch 32," in "\n".join(budget_lines({"stock": [by_epochs]}))
    assert "- Budget per run: 3 steps, batch 32," in "\n".join(budget_lines({"stock": [by_steps]}))


def test_data_line_gives_the_text_length_or_the_image_size():
    from poolft.recipes.report import budget_lines

    text = fixture_result("sst2", "finetune", "stock", 0, 0.8)
    resized, native = (fixture_result("fmnist", "finetune", "stock", 0, 0.8) for _ in range(2))
    for image in (resized, native):
        image["hyperparameters"]["data"]["text_column"] = None  # image runs read no text column
    resized["hyperparameters"]["data"]["image_size"] = 56
    runs = {"text": text, "56": resized, "native": native}
    data_line = {name: budget_lines({"stock": [run]})[1] for name, run in runs.items()}
    assert data_line["text"].endswith("; max length 64")
    assert data_line["56"].endswith("; image size 56 px")
    assert data_line["native"].endswith("; images at the image processor's size")
