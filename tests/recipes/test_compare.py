"""``poolft compare``: every head on the user's own files, with intervals, best and tied heads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from datasets_for_tests import write_image_folder, write_sentiment_csv
from PIL import Image

import poolft.recipes.workers
from poolft.cli import main
from poolft.config import load_config
from poolft.models.backbones import load_backbone_config
from poolft.recipes.compare import choose_heads, track_config
from poolft.recipes.significance import decode_predictions
from poolft.recipes.workers import RunPool


def tiny_text_compare(tmp_path, backbone, files: dict[str, str], heads: str) -> list[str]:
    """``poolft compare`` arguments for a tiny text run: ``heads``, seeds 0 and 1, two rates, no grid growth."""
    return [
        "compare",
        f"--model.backbone={backbone}",
        f"--data.data_files={json.dumps(files)}",
        "--data.max_length=32",
        "--train.batch_size=16",
        "--train.mixed_precision=no",
        f"--train.feature_cache_dir={tmp_path / 'cache'}",
        *("--poolers", heads, "--seeds", "0,1", "--rates", "1e-2,1e-1", "--grid-extensions", "0"),
    ]


def test_compare_on_a_folder_of_user_files(tmp_path, tiny_bert_dir, capsys, monkeypatch):
    files = write_sentiment_csv(tmp_path / "my-data", train_size=96, eval_size=32)
    output = tmp_path / "compare"
    arguments = [*tiny_text_compare(tmp_path, tiny_bert_dir, files, "stock,mean,attention"), "--output", str(output)]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "| head |" in out and "95% CI" in out and "Best: **" in out
    for head in ("stock", "mean", "attention"):
        assert f"| {head} |" in out
    table = (output / "README.md").read_text(encoding="utf-8")
    assert out == f"{table}poolft compare: table and plot in {output}\n"  # the runs' progress went to stderr
    assert (output / "compare.png").stat().st_size > 1000
    # each seed run kept its per-example predictions, in the evaluation split's row order
    record = json.loads((output / "results" / "compare" / "probe" / "mean-seed1.json").read_text())
    predicted, references = decode_predictions(record["predictions"])
    assert len(predicted) == len(references) == 32
    with open(files["validation"], encoding="utf-8") as handle:
        labels = [["neg", "pos"].index(row["label"]) for row in csv.DictReader(handle)]
    assert references.tolist() == labels
    assert np.mean(predicted == references) == record["final"]["accuracy"]
    assert record["hyperparameters"]["train"]["feature_cache"] is True  # the probe track
    # the runs keep metrics, logs and predictions, not a copy of the model each
    run = output / "runs" / "compare" / "probe" / "mean-seed1"
    assert (run / "metrics.json").is_file() and (run / "eval_predictions.json").is_file()
    assert not list(run.rglob("*.safetensors")) and not (run / "best").exists()

    calls = []
    original = RunPool.map
    monkeypatch.setattr(
        RunPool, "map", lambda pool, function, jobs: calls.extend(jobs) or original(pool, function, jobs)
    )
    assert main(arguments) == 0  # a rerun skips every finished run and prints the same table
    assert calls == []
    assert capsys.readouterr().out == f"{table}poolft compare: table and plot in {output}\n"


def test_heads_trained_on_worker_processes_record_what_one_process_records(tmp_path, tiny_bert_dir, monkeypatch):
    files = write_sentiment_csv(tmp_path / "my-data", train_size=96, eval_size=32)
    common = tiny_text_compare(tmp_path, tiny_bert_dir, files, "mean,attention")
    assert main([*common, "--workers", "1", "--output", str(tmp_path / "one")]) == 0
    started = []
    original = RunPool._executor
    monkeypatch.setattr(RunPool, "_executor", lambda pool: started.append(pool.workers) or original(pool))
    monkeypatch.setattr(poolft.recipes.workers, "WORKER_STARTUP_SECONDS", 0.0)  # tiny runs: start them anyway
    assert main([*common, "--workers", "2", "--output", str(tmp_path / "two")]) == 0
    assert started and set(started) == {2}
    one, two = (sorted((tmp_path / out / "results").rglob("*.json")) for out in ("one", "two"))
    assert [path.relative_to(tmp_path / "one") for path in one] == [path.relative_to(tmp_path / "two") for path in two]
    assert len(one) == 8  # 2 heads x (2 rates + 2 seeds)
    for path_one, path_two in zip(one, two, strict=True):
        first, second = json.loads(path_one.read_text()), json.loads(path_two.read_text())
        for key in ("run_hash", "final", "curve", "predictions", "rate", "rate_search"):
            assert first.get(key) == second.get(key), (path_one.name, key)


def test_default_heads_are_every_head_that_fits_the_backbone(tiny_bert_dir, tiny_vit_dir):
    text = track_config(load_config(None, [f"--model.backbone={tiny_bert_dir}"]), "probe")
    heads, skipped = choose_heads(
        text, None, "probe", str(tiny_bert_dir), load_backbone_config(str(tiny_bert_dir), text.model)
    )
    assert {"stock", "cls", "mean", "max", "clsmean", "attention", "window", "meanmax", "gem"} <= set(heads)
    assert set(skipped) == {"flatten", "window-sliding"}  # a patch grid: images only
    image = track_config(load_config(None, [f"--model.backbone={tiny_vit_dir}"]), "probe")
    heads, skipped = choose_heads(
        image, None, "probe", str(tiny_vit_dir), load_backbone_config(str(tiny_vit_dir), image.model)
    )
    assert {"flatten", "window-sliding", "stock", "clsmean"} <= set(heads) and not skipped


def test_the_probe_stock_head_is_the_family_s_own_or_skipped(family_dir):
    """DINOv2's stock head reads [CLS, mean(patches)]; CLIP's vision tower has none, so no stock row."""
    from poolft.recipes.sweep import head_config

    dinov2 = family_dir("dinov2")
    base = track_config(load_config(None, [f"--model.backbone={dinov2}"]), "probe")
    config = head_config(base, "stock", "probe", load_backbone_config(str(dinov2), base.model))
    assert (config.model.pooler, config.model.stock_head) == ("clsmean", False)
    clip = family_dir("clip-vision")
    base = track_config(load_config(None, [f"--model.backbone={clip}"]), "probe")
    heads, skipped = choose_heads(base, None, "probe", str(clip), load_backbone_config(str(clip), base.model))
    assert "stock" not in heads and "no stock image classifier" in skipped["stock"]


def test_compare_mistakes_are_one_line(tmp_path, tiny_bert_dir, capsys, quiet_libraries):
    import csv

    common = [f"--model.backbone={tiny_bert_dir}", "--output", str(tmp_path / "out")]
    files = write_sentiment_csv(tmp_path / "data", train_size=32, eval_size=8)
    with open(tmp_path / "data" / "unseen.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["text", "label"], ["a fine film", "pos"], ["meh", "maybe"]])
    unseen = {"train": files["train"], "validation": str(tmp_path / "data" / "unseen.csv")}
    rows = [["text", "label"], *([f"film {i}", "neg"] for i in range(19)), ["the one good film", "pos"]]
    with open(tmp_path / "data" / "rare.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    rare = {"train": str(tmp_path / "data" / "rare.csv"), "validation": files["validation"]}
    for extra, message in (
        (["--poolers", "mean,flatten"], "head flatten cannot run here"),
        (["--poolers", "mean,nope"], "unknown head(s) nope"),
        (["--holdout", "1.5"], "--holdout 1.5 must be in (0, 1)"),
        (["--workers", "0"], "--workers 0 must be 1 or more"),
        (["--rates", ""], "--rates '' must list one or more positive finite rates"),
        (["--rates", "1e-3,-1"], "--rates '1e-3,-1' must list one or more positive finite rates"),
        (["--rates", "inf"], "--rates 'inf' must list one or more positive finite rates"),
        (["--rates", "1e-3,,3e-3"], "must list one or more positive finite rates"),
        (["--rates", "3e-3,3e-3"], "--rates '3e-3,3e-3' lists a rate twice"),
        (["--seeds", "0,0"], "--seeds '0,0' lists a seed twice"),
        (["--seeds", "a"], "--seeds 'a' is not a comma-separated list of ints; write it like 0,1,2"),
        (["--rates", "abc"], "--rates 'abc' is not a comma-separated list of floats"),
        (["--data.data_files", json.dumps(unseen)], "has label(s) 'maybe' never seen in training"),
        (["--data.data_files", json.dumps(rare), "--rates", "1e-2,1e-1"], "after holding out 0.1 of the training"),
    ):
        assert main(["compare", *common, *extra]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in lines if line.startswith("poolft: error:")]  # after the skip notes
        assert errors == lines[-1:] and message in errors[0], lines
    assert not (tmp_path / "out").exists()  # a data mistake is found before any run folder exists

    (tmp_path / "a-file").write_text("mine\n")
    assert main(["compare", f"--model.backbone={tiny_bert_dir}", "--output", str(tmp_path / "a-file")]) == 2
    assert "--output" in capsys.readouterr().err and (tmp_path / "a-file").read_text() == "mine\n"
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "results").write_text("a file where compare keeps its records\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for output, message in ((odd, "holds a file named results"), (tmp_path / "dangling", "is a file")):
        assert main(["compare", f"--model.backbone={tiny_bert_dir}", "--output", str(output)]) == 2
        assert message in capsys.readouterr().err
    assert sorted(path.name for path in odd.iterdir()) == ["results"] and not (tmp_path / "nowhere").exists()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("my notes\n")
    assert main(["compare", f"--model.backbone={tiny_bert_dir}", "--output", str(notes)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a README.md that poolft compare did not write" in err and len(err.splitlines()) == 1
    assert sorted(path.name for path in notes.iterdir()) == ["README.md"]


def test_an_unreadable_image_is_one_line_before_any_run(tmp_path, tiny_vit_dir, capsys, quiet_libraries):
    # the data check decodes and sizes the images as the runs will: a broken file in the training split
    # (or in the evaluation split) stops compare before its first run folder exists
    for split in ("train", "test"):
        images = write_image_folder(tmp_path / f"broken-{split}", {"train": 4, "test": 2}, mode="RGB")
        (images / split / "light" / "7.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        output = tmp_path / f"out-{split}"
        arguments = ["compare", f"--model.backbone={tiny_vit_dir}", f"--data.path={images}", "--data.eval_split=test"]
        assert main([*arguments, "--output", str(output)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith("poolft: error: image ") and f"7.png in split '{split}' cannot be read" in lines[-1]
        assert not any(line.startswith("poolft: error:") for line in lines[:-1]) and not output.exists()


def test_compare_runs_image_heads_on_a_folder_of_images(tmp_path, tiny_vit_dir, capsys):
    for split, count in (("train", 20), ("test", 8)):
        for label, level in (("dark", 60), ("light", 190)):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(count // 2):
                pixels = np.clip(np.random.RandomState(i).randn(28, 28) * 25 + level, 0, 255).astype("uint8")
                Image.fromarray(pixels, "L").convert("RGB").save(folder / f"{i}.png")
    arguments = [
        "compare",
        f"--model.backbone={tiny_vit_dir}",
        f"--data.path={tmp_path / 'images'}",
        "--data.eval_split=test",
        "--train.batch_size=8",
        f"--train.feature_cache_dir={tmp_path / 'cache'}",
        "--poolers",
        "stock,flatten,window-sliding",
        "--seeds",
        "0",
        "--rates",
        "1e-2",
        "--output",
        str(tmp_path / "out"),
    ]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "| flatten |" in out and "| window-sliding |" in out
    record = json.loads((tmp_path / "out" / "results" / "compare" / "probe" / "window-sliding-seed0.json").read_text())
    assert record["pooler_options"]["mode"] == "sliding" and record["pooler_options"]["grid"] is True


def test_probe_heads_train_on_one_thread_unless_the_config_says():
    from poolft.config import RunConfig
    from poolft.recipes.compare import track_config

    base = RunConfig()
    assert track_config(base, "probe").train.torch_threads == 1
    assert track_config(base, "finetune").train.torch_threads is None
    assert track_config(base, "finetune-lpft").train.torch_threads is None
    base.train.torch_threads = 2
    assert track_config(base, "probe").train.torch_threads == 2  # the user's setting wins
    assert base.train.torch_threads == 2  # and the base config is not changed


def test_a_script_re_run_by_a_starting_worker_stops_before_it_trains(monkeypatch):
    import multiprocessing

    import pytest

    from poolft.errors import PoolftError

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(PoolftError, match='put the call under `if __name__ == "__main__":`'):
        RunPool(2)


def test_ctrl_c_stops_the_workers_at_once():
    import os
    import signal
    import threading
    import time

    # a shell without job control starts background jobs with SIGINT ignored; this test needs Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pool = RunPool(2, startup_seconds=0)
    workers = []

    def interrupt():  # Ctrl-C while both workers run a 60 s job
        workers.extend(pool.executor._processes.values())
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(3.0, interrupt)
    started = time.perf_counter()
    try:
        with pool:
            # both workers up (forked once the fork server has imported): every job goes to them
            for started_worker in [pool._executor().submit(time.sleep, 0.5) for _ in range(2)]:
                started_worker.result()
            started = time.perf_counter()
            timer.start()
            pool.map(time.sleep, [60, 60, 60])
        raise AssertionError("the interrupt did not reach map")
    except KeyboardInterrupt:
        pass
    finally:
        timer.cancel()
    assert time.perf_counter() - started < 30  # not the 60 s the running jobs had left
    assert len(workers) == 2 and not any(worker.is_alive() for worker in workers)
    assert pool.executor is None


def mark_once_and_wait(job: tuple[str, int]) -> int:
    """A job that fails if it runs twice (its marker exists), takes 0.3 s, and says where it ran."""
    import os
    import time
    from pathlib import Path

    folder, index = job
    (Path(folder) / str(index)).touch(exist_ok=False)
    time.sleep(0.3)
    return os.getpid()


def test_this_process_runs_jobs_while_the_workers_start(tmp_path):
    """Each starting worker imports torch for seconds: meanwhile the parent takes jobs from the end of
    the queue, and every job still runs exactly once, with its result in job order."""
    import os

    jobs = [(str(tmp_path), index) for index in range(16)]
    with RunPool(2, startup_seconds=0) as pool:
        places = pool.map(mark_once_and_wait, jobs)
    assert sorted(int(path.name) for path in tmp_path.iterdir()) == list(range(16))  # each ran, once
    assert places[0] == os.getpid()  # the timed first job
    here = [index for index, place in enumerate(places) if place == os.getpid()]
    assert here[1:] and here[1:] == list(range(16 - len(here) + 1, 16))  # then jobs from the end
    assert len(set(places) - {os.getpid()}) >= 1 and places[1] != os.getpid()  # the first queued: a worker


def test_a_compare_of_other_data_into_the_same_output_keeps_the_earlier_records(tmp_path, tiny_bert_dir, capsys):
    output = tmp_path / "compare"
    records = {}
    for name, train_size in (("first", 48), ("second", 64)):
        files = write_sentiment_csv(tmp_path / name, train_size=train_size, eval_size=16)
        arguments = [*tiny_text_compare(tmp_path, tiny_bert_dir, files, "mean"), "--seeds", "0", "--rates", "1e-1"]
        assert main([*arguments, "--workers", "1", "--output", str(output)]) == 0
        records[name] = json.loads((output / "results" / "compare" / "probe" / "mean-seed0.json").read_text())
    err = capsys.readouterr().err
    assert "mean-seed0.json recorded a run of other settings, data or CPU kind; moved it to" in err
    assert "moved its finished run folder" in err  # its run folder goes with it
    kept = output / "results" / "compare" / "probe" / "mean-seed0.json.replaced-1"
    assert json.loads(kept.read_text()) == records["first"]
    assert records["second"]["run_hash"] != records["first"]["run_hash"]
    assert (output / "runs" / "compare" / "probe" / "mean-seed0.replaced-1" / "metrics.json").is_file()


def test_a_data_file_edited_in_place_is_other_data(tmp_path, tiny_bert_dir, capsys):
    """The same settings on a data file whose contents changed: the earlier record is not reused; it and
    its run folder are moved aside; the table shows only the runs of this grid (not a stale seed)."""
    files = write_sentiment_csv(tmp_path / "data", train_size=48, eval_size=16)
    output = tmp_path / "compare"
    common = [*tiny_text_compare(tmp_path, tiny_bert_dir, files, "mean"), "--rates", "1e-1", "--workers", "1"]
    assert main([*common, "--seeds", "0,1", "--output", str(output)]) == 0
    first = json.loads((output / "results" / "compare" / "probe" / "mean-seed0.json").read_text())
    train = Path(files["train"])
    lines = train.read_text().splitlines()
    train.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")  # same rows, other order: other data
    capsys.readouterr()
    assert main([*common, "--seeds", "0", "--output", str(output)]) == 0
    captured = capsys.readouterr()
    assert "mean-seed0.json recorded a run of other settings, data or CPU kind" in captured.err
    assert "(already done)" not in captured.err
    row = next(line for line in captured.out.splitlines() if line.startswith("| mean |"))
    assert row.split("|")[4].strip() == "1"  # one seed asked for: the earlier seed 1 is not averaged in
    kept = output / "results" / "compare" / "probe" / "mean-seed0.json.replaced-1"
    assert json.loads(kept.read_text()) == first


def test_a_ctrl_c_while_workers_start_is_not_lost_and_never_reaches_them():
    """SIGINT is blocked while worker processes start: they inherit the block for good, and this
    process gets the Ctrl-C as soon as the block ends (an ignored signal would be lost)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import pytest

    from poolft.recipes.workers import workers_ignore_ctrl_c

    # a shell without job control starts background jobs with SIGINT ignored; this test needs Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)
    reached_the_end = False
    with pytest.raises(KeyboardInterrupt), workers_ignore_ctrl_c():
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the workers start
        time.sleep(0.2)
        reached_the_end = True  # not raised inside the block
    assert reached_the_end
    try:
        time.sleep(0.5)  # the child is running Python by now
        child.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert child.poll() is None  # it never saw the Ctrl-C
    finally:
        child.kill()
        child.wait()


def test_a_grid_command_started_as_several_processes_is_one_line(monkeypatch, capsys):
    """Under torchrun every process would run the whole grid into the same folders (and predict would
    print every prediction once per process)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    commands = (["compare"], ["sweep", "--config", "recipes/sst2/probe.yaml"], ["predict", "--model", "x", "a text"])
    for command in commands:
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"poolft {command[0]} was started as 2 processes (torchrun or accelerate launch)" in err
        assert f"start it once, as `poolft {command[0]} ...`" in err
