"""A mistake found while a run loads its data or model never costs the run it would overwrite,
and mistakes that used to surface mid-training are one line before the run folder is touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import snapshot
from datasets_for_tests import write_image_folder, write_sentiment_csv

from poolft.cli import main


def text_run(tmp_path: Path, backbone: Path, output: Path) -> list[str]:
    files = write_sentiment_csv(tmp_path / "data", train_size=24, eval_size=8)
    return [
        "train",
        f"--data.data_files={json.dumps(files)}",
        f"--model.backbone={backbone}",
        f"--train.output_dir={output}",
        "--train.batch_size=8",
        "--train.max_steps=2",
        "--train.progress=false",
        "--train.mixed_precision=no",
    ]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("poolft: error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ("--data.text_column=nope", "column 'nope' not in split"),
        ("--model.pooler=nope", "unknown pooler 'nope'"),
        ("--data.max_length=4096", "exceeds the backbone's 128 positions"),
        ("--model.pooler_options={grid: true}", "pools a patch grid, but backbone"),
    ],
)
def test_a_mistake_under_overwrite_keeps_the_earlier_run(tmp_path, tiny_bert_dir, capsys, mistake, message):
    output = tmp_path / "run"
    pooler = ["--model.pooler=window"] if "grid" in mistake else []
    assert main(text_run(tmp_path, tiny_bert_dir, output)) == 0
    before = snapshot(output)
    assert "model.safetensors" in before and "metrics.json" in before
    capsys.readouterr()

    code = main([*text_run(tmp_path, tiny_bert_dir, output), "--overwrite_output_dir=true", *pooler, mistake])

    assert code == 2
    assert message in one_error_line(capsys)
    assert snapshot(output) == before  # nothing deleted, nothing rewritten


def test_overwrite_still_replaces_the_run_when_nothing_is_wrong(tmp_path, tiny_bert_dir):
    output = tmp_path / "run"
    assert main(text_run(tmp_path, tiny_bert_dir, output)) == 0
    (output / "checkpoints" / "stray.txt").write_text("from the old run")
    assert main([*text_run(tmp_path, tiny_bert_dir, output), "--overwrite_output_dir=true", "--seed=1"]) == 0
    assert not (output / "checkpoints" / "stray.txt").exists()
    assert "seed: 1" in (output / "config.yaml").read_text()


def test_images_smaller_than_a_patch_are_one_line_before_training(tmp_path, tiny_vit_dir, capsys):
    data = write_image_folder(tmp_path / "images", {"train": 4, "validation": 2})
    output = tmp_path / "run"
    command = [
        "train",
        f"--data.path={data}",
        f"--model.backbone={tiny_vit_dir}",
        f"--train.output_dir={output}",
        "--data.image_size=5",  # the tiny ViT's patches are 7 x 7
        "--train.max_steps=1",
        "--train.progress=false",
    ]
    assert main(command) == 2
    line = one_error_line(capsys)
    assert "images of 5x5 px are smaller than one 7x7 patch" in line and "data.image_size to at least 7" in line
    assert not output.exists() or snapshot(output) == {}  # no file written


def test_eval_takes_local_files_and_a_malformed_mapping_is_one_line(tmp_path, tiny_bert_dir, capsys):
    """``poolft eval --data.data_files`` scores a local file; its metrics equal the run's own on that file."""
    output = tmp_path / "run"
    assert main(text_run(tmp_path, tiny_bert_dir, output)) == 0
    final = json.loads((output / "metrics.json").read_text())["final"]
    capsys.readouterr()
    validation = tmp_path / "data" / "validation.csv"

    assert main(["eval", f"--model={output}", f"--data.data_files={{validation: {validation}}}"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["samples"] == final["samples"] == 8
    assert metrics["accuracy"] == final["accuracy"]
    assert metrics["loss"] == pytest.approx(final["loss"], rel=1e-5)

    assert main(["eval", f"--model={output}", f"--data.data_files={{validation:{validation}}}"]) == 2
    assert "not a mapping of split to file" in one_error_line(capsys)


def test_files_written_atomically_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from poolft.training.run_folder import write_atomically

    previous = os.umask(0o022)
    try:
        write_atomically(tmp_path / "metrics.json", "{}\n")
        (tmp_path / "plain.json").write_text("{}\n")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o644  # not mkstemp's 0600
    assert (tmp_path / "metrics.json").read_text() == "{}\n"


def test_another_feature_cache_folder_is_the_same_run(tmp_path):
    """A run folder is "another run" when a setting that changes results differs, not where the
    cached states live (an interrupted run resumes with its cache moved)."""
    from poolft.config import config_to_yaml, load_config
    from poolft.training.run_folder import CONFIG_FILE, holds_other_run

    probe = ["--train.freeze_backbone=true", "--train.feature_cache=true"]
    recorded = load_config(None, [*probe, "--train.feature_cache_dir=/first/cache"])
    (tmp_path / CONFIG_FILE).write_text(config_to_yaml(recorded), encoding="utf-8")
    assert not holds_other_run(load_config(None, [*probe, "--train.feature_cache_dir=/second/cache"]), tmp_path)
    assert holds_other_run(load_config(None, [*probe, "--train.learning_rate=0.5"]), tmp_path)


def two_step_run(tmp_path, backbone) -> list[str]:
    """``poolft train`` arguments of a two-step text run (no output folder yet)."""
    files = write_sentiment_csv(tmp_path / "data", train_size=8, eval_size=4)
    return [
        "train",
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={backbone}",
        "--train.batch_size=4",
        "--train.max_steps=2",
        "--train.progress=false",
    ]


def test_the_run_folder_written_another_way_is_the_same_run(tmp_path, tiny_bert_dir, monkeypatch, capsys):
    """Resuming names the folder however the user writes it (relative, absolute, a trailing slash,
    after a move): the folder's config is the run's, its own path is no setting of the run."""
    monkeypatch.chdir(tmp_path)
    arguments = two_step_run(tmp_path, tiny_bert_dir)
    assert main([*arguments, "--train.output_dir=runs/rel"]) == 0
    (tmp_path / "runs" / "rel").rename(tmp_path / "moved")
    for spelling in (f"{tmp_path / 'moved'}", "moved/", "./moved"):
        assert main([*arguments, f"--train.output_dir={spelling}", "--train.resume_from_checkpoint=latest"]) == 0
        assert "holds a different run" not in capsys.readouterr().err
    longer = [*arguments, "--train.output_dir=moved", "--train.max_steps=3", "--train.resume_from_checkpoint=latest"]
    assert main(longer) != 0
    assert "holds a different run" in capsys.readouterr().err  # a setting that changes results still counts


def test_a_second_run_on_a_folder_in_use_stops_before_it_touches_it(tmp_path, tiny_bert_dir, capsys):
    """While another process trains into the folder (here: holds its lock), a resume or an overwrite
    of it is one line and changes nothing; once that process is gone, the folder is free again."""
    import subprocess
    import sys

    folder = tmp_path / "run"
    arguments = [*two_step_run(tmp_path, tiny_bert_dir), f"--train.output_dir={folder}"]
    assert main(arguments) == 0
    before = snapshot(folder)
    hold = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    print('busy', flush=True)\n"
        "else:\n    print('locked', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # the finished run in this process let it go
        for again in ("--train.resume_from_checkpoint=latest", "--train.overwrite_output_dir=true"):
            assert main([*arguments, again]) == 2
            assert f"output_dir {folder} is in use by another poolft run" in capsys.readouterr().err
            assert snapshot(folder) == before
    finally:
        holder.kill()
        holder.wait()
    assert main([*arguments, "--train.overwrite_output_dir=true"]) == 0
