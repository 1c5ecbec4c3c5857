"""Fault injection: kill ``poolft train`` with SIGKILL, resume it, and demand the same result bit for bit.

The script builds a tiny BERT and a small synthetic sentiment CSV in a temporary folder, runs one
uninterrupted reference run (``python -m poolft train``: CPU, full precision, 2 epochs, a
checkpoint every 3 steps, an evaluation every 5), then runs ``--trials`` trials. Each trial starts
the same run in a fresh output folder, kills it with SIGKILL at a random moment, resumes it once
with ``--train.resume_from_checkpoint latest`` and compares the final ``model.safetensors`` (and
``best/model.safetensors``) with the reference tensor by tensor (``torch.equal``) and the final
and best metrics in ``metrics.json`` value by value.

The kill moment's class goes round-robin over ``--classes`` (default ``step,eval,checkpoint``):

  step        inside a training step (after backward, before the optimiser update)
  eval        during an evaluation (computed, not yet recorded)
  checkpoint  in the middle of writing a checkpoint (accelerate's files written, no manifest yet)
  random      from outside, at a random wall-clock moment after the first logged step
  rank        one process (rank drawn at random) of a 2-process ``torchrun`` run, inside a step
  rank-no-agent  the same with the two processes started directly, without torchrun's agent to
              stop the survivor: it must fail on its own
  rank-stopped  the same, but the process is frozen (SIGSTOP) instead of killed, a peer that hangs:
              the survivor must give up after ``train.distributed_timeout_seconds``
              (``--distributed-timeout``), then the frozen one is killed

``step``/``eval``/``checkpoint``/``rank``/``rank-no-agent`` use poolft's fault hook (``POOLFT_FAULT_AT=point:step``,
``POOLFT_FAULT_RANK``, see ``poolft/training/fault_injection.py``): the step is drawn at random
among those where that point is reached, so the kill lands there deterministically. ``random``
needs no hook. A ``rank*`` trial must end the whole job with a non-zero status (the line reports
the seconds from the kill to the last process's exit), and is resumed on 2 processes with
``torchrun`` and compared with an uninterrupted 2-process reference run.

Then two damage tests on copies of the finished reference run: (1) the newest checkpoint gets a
truncated file and the next one loses a file -- resume must report each in one line and continue
from the newest intact checkpoint; (2) the same with the manifest of the newest one deleted. Both
must again end bit for bit equal to the reference.

Prints one line per trial and ends with ``survived N/N`` (exit status 0 only if all survived).

Usage::

    python scripts/fault_test.py                 # 20 trials (several minutes on 2 CPU cores)
    python scripts/fault_test.py --trials 3      # smoke test
    python scripts/fault_test.py --classes random --trials 4
    python scripts/fault_test.py --classes rank,rank-no-agent,rank-stopped --trials 6 --no-damage
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRAIN_SIZE, EVAL_SIZE, BATCH, EPOCHS = 96, 24, 8, 2
SAVE_EVERY, EVAL_EVERY, SAVE_LIMIT = 3, 5, 3
CLASSES = ("step", "eval", "checkpoint", "random", "rank", "rank-no-agent", "rank-stopped")
PROCESSES = 2  # the rank* classes
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={PROCESSES}", "--standalone"]
FAULT_LINE = "fault injection: SIGKILL"


def run_arguments(backbone: Path, files: dict[str, str], output: Path) -> list[str]:
    return [
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={backbone}",
        f"--train.output_dir={output}",
        f"--train.batch_size={BATCH}",
        "--train.eval_batch_size=8",
        f"--train.epochs={EPOCHS}",
        "--train.learning_rate=1e-3",
        "--train.head_learning_rate=1e-2",
        "--train.mixed_precision=no",
        f"--train.save_every_steps={SAVE_EVERY}",
        f"--train.save_total_limit={SAVE_LIMIT}",
        f"--train.eval_every_steps={EVAL_EVERY}",
        "--train.torch_threads=1",
        "--train.progress=false",
    ]


def child_environment(fault: str | None = None, rank: int | None = None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("POOLFT_FAULT_AT", None)
    env.pop("POOLFT_FAULT_RANK", None)
    if fault:
        env["POOLFT_FAULT_AT"] = fault
    if rank is not None:
        env["POOLFT_FAULT_RANK"] = str(rank)
    # the poolft that this script's interpreter imports (a checkout on PYTHONPATH wins over the install)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.environ.get("PYTHONPATH", ""), str(REPO)] if p)
    return env


def poolft_train(
    arguments: list[str], env: dict[str, str], timeout: float = 600, processes: int = 1
) -> subprocess.CompletedProcess:
    launcher = TORCHRUN if processes > 1 else [sys.executable]
    command = [*launcher, "-m", "poolft", "train", *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_one_rank(
    arguments: list[str], output: Path, rank: int, *, fault: str | None, agent: bool, freeze_at_line: int = 0
) -> tuple[list[int], float]:
    """Run on 2 processes with ``rank`` dying at ``fault``; exit codes and seconds from the kill to the last exit.

    With ``agent`` the job is ``torchrun`` (its agent stops the other worker); without, the two
    workers are started directly with the environment torchrun would give them, so the survivor
    has to notice the dead peer (or time out) by itself. ``freeze_at_line``: instead of a fault,
    SIGSTOP ``rank`` once ``log.jsonl`` has that many lines, and SIGKILL it when the survivor is gone.
    """
    env = child_environment(fault, rank if fault else None)
    command = [sys.executable, "-m", "poolft", "train", *arguments]
    if agent:
        launches = [(TORCHRUN + command[1:], env)]
    else:
        port = str(free_port())
        shared = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": str(PROCESSES)}
        shared["LOCAL_WORLD_SIZE"] = str(PROCESSES)
        launches = [(command, {**env, **shared, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(PROCESSES)]
    logs = [output.parent / f"{output.name}-launch-{i}.stderr" for i in range(len(launches))]
    processes = []
    for (launch, launch_env), log in zip(launches, logs, strict=True):
        with open(log, "w") as handle:
            processes.append(subprocess.Popen(launch, env=launch_env, stdout=subprocess.DEVNULL, stderr=handle))
    killed_at, deadline = None, time.monotonic() + 900
    log_file = output / "log.jsonl"
    try:
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            if freeze_at_line and killed_at is None:
                if log_file.is_file() and len(log_file.read_bytes().splitlines()) >= freeze_at_line:
                    processes[rank].send_signal(signal.SIGSTOP)
                    killed_at = time.monotonic()
            elif killed_at is None and any(FAULT_LINE in log.read_text(errors="replace") for log in logs):
                killed_at = time.monotonic()
            survivors = [p for i, p in enumerate(processes) if not (freeze_at_line and i == rank)]
            if freeze_at_line and killed_at is not None and all(p.poll() is not None for p in survivors):
                processes[rank].kill()  # the frozen one, once the survivor has given up
            time.sleep(0.02)
    finally:
        for process in processes:
            if process.poll() is None:  # still running at the deadline: a hang
                process.kill()
            process.wait()
    if killed_at is None and any(FAULT_LINE in log.read_text(errors="replace") for log in logs):
        killed_at = time.monotonic()
    seconds = time.monotonic() - killed_at if killed_at is not None else float("nan")
    return [p.returncode for p in processes], seconds


def kill_at_random_moment(arguments: list[str], output: Path, rng: random.Random, log_lines: int) -> int:
    """Start the run and SIGKILL it from outside after a random number of logged lines plus a random delay."""
    command = [sys.executable, "-m", "poolft", "train", *arguments]
    target_lines = rng.randint(1, log_lines - 1)
    delay = rng.uniform(0.0, 0.05)
    log = output / "log.jsonl"
    process = subprocess.Popen(command, env=child_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None:
            if log.is_file() and len(log.read_bytes().splitlines()) >= target_lines:
                time.sleep(delay)
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        return process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def compare_with_reference(reference: Path, run: Path) -> list[str]:
    """Differences between two finished runs (empty when identical where it matters)."""
    import torch

    problems = []
    for relative in ("model.safetensors", "best/model.safetensors"):
        if not (run / relative).is_file():
            problems.append(f"{relative} missing")
            continue
        first, second = load_tensors(reference / relative), load_tensors(run / relative)
        if first.keys() != second.keys():
            problems.append(f"{relative}: different tensor names")
            continue
        unequal = [key for key in first if not torch.equal(first[key], second[key])]
        if unequal:
            problems.append(f"{relative}: {len(unequal)} tensors differ (e.g. {unequal[0]})")
    expected = json.loads((reference / "metrics.json").read_text())
    try:
        got = json.loads((run / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return [*problems, "metrics.json missing or unreadable"]
    for key in ("final", "best", "global_step", "epochs_completed", "train_samples_seen", "skipped_nonfinite_steps"):
        if expected.get(key) != got.get(key):
            problems.append(f"metrics.json {key}: {got.get(key)!r} != {expected.get(key)!r}")
    leftovers = sorted(p.name for p in (run / "checkpoints").glob(".tmp-*"))
    if leftovers:
        problems.append(f"temporary checkpoint folders left: {', '.join(leftovers)}")
    return problems


def checkpoint_summary(output: Path) -> str:
    root = output / "checkpoints"
    if not root.is_dir():
        return "ckpts=-"
    done = sorted((p.name for p in root.iterdir() if p.name.startswith("step-")), key=lambda n: int(n[5:]))
    partial = sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-"))
    text = "ckpts=" + (",".join(n[5:] for n in done) or "-")
    return text + (f" partial={','.join(partial)}" if partial else "")


def resume_lines(stdout: str) -> list[str]:
    keys = ("resuming from", "skipping damaged", "no intact checkpoint")
    return [line.strip() for line in stdout.splitlines() if any(k in line for k in keys)]


def fault_points(reference: Path, total_steps: int, steps_per_epoch: int) -> dict[str, list[int]]:
    """Global steps at which each hook point is reached in this run."""
    log = [json.loads(line) for line in (reference / "log.jsonl").read_text().splitlines()]
    evaluations = sorted({r["step"] for r in log if "eval_accuracy" in r})
    saves = {s for s in range(SAVE_EVERY, total_steps, SAVE_EVERY)}
    saves |= {s for s in range(steps_per_epoch, total_steps, steps_per_epoch)}
    saves.add(total_steps)
    return {"step": list(range(1, total_steps + 1)), "eval": evaluations, "checkpoint": sorted(saves)}


def run_trial(
    index: int,
    kind: str,
    rng: random.Random,
    points: dict[str, list[int]],
    setup: dict,
) -> bool:
    output = setup["work"] / f"trial-{index:02d}"
    arguments = run_arguments(setup["backbone"], setup["files"], output)
    started = time.perf_counter()
    if kind.startswith("rank"):
        return run_rank_trial(index, kind, rng, points, setup, output, arguments, started)
    if kind == "random":
        where = "random"
        code = kill_at_random_moment(arguments, output, rng, setup["log_lines"])
        injected = True
    else:
        where = f"{kind}:{rng.choice(points[kind])}"
        result = poolft_train(arguments, child_environment(where))
        code = result.returncode
        injected = "fault injection: SIGKILL" in result.stderr
    label = f"trial {index:2d} {where:<14s}"
    if code != -signal.SIGKILL:
        why = "finished without being killed: is the POOLFT_FAULT_AT hook wired?" if code == 0 else f"exit {code}"
        print(f"{label} FAIL ({why})", flush=True)
        return False
    if not injected:
        print(f"{label} FAIL (killed, but not by the fault hook)", flush=True)
        return False
    state = checkpoint_summary(output)
    resumed = poolft_train([*arguments, "--train.resume_from_checkpoint=latest"], child_environment())
    if resumed.returncode != 0:
        tail = (resumed.stderr.strip().splitlines() or ["?"])[-1]
        print(f"{label} killed {state} | resume FAILED (exit {resumed.returncode}: {tail})", flush=True)
        return False
    starts = [line.split("resuming from ")[-1] for line in resume_lines(resumed.stdout) if "resuming from" in line]
    source = Path(starts[-1]).name if starts else "scratch"
    problems = compare_with_reference(setup["reference"], output)
    seconds = time.perf_counter() - started
    verdict = "OK: weights and metrics equal" if not problems else "FAIL: " + "; ".join(problems)
    print(f"{label} killed {state} | resumed from {source} | {verdict} ({seconds:.0f} s)", flush=True)
    if not problems and not setup["keep"]:
        shutil.rmtree(output, ignore_errors=True)
    return not problems


def run_rank_trial(
    index: int,
    kind: str,
    rng: random.Random,
    points: dict[str, list[int]],
    setup: dict,
    output: Path,
    arguments: list[str],
    started: float,
) -> bool:
    """Kill (or freeze) one process of a 2-process run; the job must fail, the resumed run match."""
    rank, step = rng.randrange(PROCESSES), rng.choice(points["step"])
    timeout = setup["distributed_timeout"]
    killing = [*arguments, f"--train.distributed_timeout_seconds={timeout}"]
    if kind == "rank-stopped":
        line = rng.randint(1, setup["log_lines"] - 1)
        codes, seconds = kill_one_rank(killing, output, rank, fault=None, agent=False, freeze_at_line=line)
        label = f"trial {index:2d} {kind} {rank}@line:{line:<3d}"
    else:
        codes, seconds = kill_one_rank(killing, output, rank, fault=f"step:{step}", agent=kind == "rank")
        label = f"trial {index:2d} {kind} {rank}@step:{step:<3d}"
    exited = f"exit {'/'.join(map(str, codes))} {seconds:.1f} s after the kill"
    # torchrun stops the survivor itself; alone it must notice the dead peer or give up after the timeout
    bound = timeout + 60
    if any(code == 0 for code in codes) or not seconds < bound:
        print(f"{label} FAIL ({exited}; expected a non-zero exit within {bound} s)", flush=True)
        return False
    state = checkpoint_summary(output)
    resumed = poolft_train(
        [*arguments, "--train.resume_from_checkpoint=latest"], child_environment(), processes=PROCESSES
    )
    if resumed.returncode != 0:
        tail = (resumed.stderr.strip().splitlines() or ["?"])[-1]
        print(f"{label} {exited} {state} | resume FAILED (exit {resumed.returncode}: {tail})", flush=True)
        return False
    starts = [line.split("resuming from ")[-1] for line in resume_lines(resumed.stdout) if "resuming from" in line]
    source = Path(starts[-1]).name if starts else "scratch"
    problems = compare_with_reference(setup["reference_2"], output)
    verdict = "OK: weights and metrics equal" if not problems else "FAIL: " + "; ".join(problems)
    total = time.perf_counter() - started
    print(f"{label} {exited} {state} | resumed from {source} | {verdict} ({total:.0f} s)", flush=True)
    if not problems and not setup["keep"]:
        shutil.rmtree(output, ignore_errors=True)
        for log in output.parent.glob(f"{output.name}-launch-*.stderr"):
            log.unlink()
    return not problems


def damage_test(name: str, setup: dict, damage) -> bool:
    """Copy the finished reference run, drop its final outputs, damage checkpoints, resume, compare."""
    output = setup["work"] / f"damage-{name}"
    shutil.copytree(setup["reference"], output)
    for finished in ("model.safetensors", "metrics.json"):
        (output / finished).unlink()
    # the copy is the same run in another folder: point its saved config there
    config = yaml.safe_load((output / "config.yaml").read_text())
    config["train"]["output_dir"] = str(output)
    (output / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    checkpoints = sorted((output / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    expected_source, expected_reports = damage(checkpoints)
    arguments = run_arguments(setup["backbone"], setup["files"], output)
    resumed = poolft_train([*arguments, "--train.resume_from_checkpoint=latest"], child_environment())
    lines = resume_lines(resumed.stdout)
    skipped = [line for line in lines if "skipping damaged" in line]
    problems = []
    if resumed.returncode != 0:
        problems.append(f"resume exit {resumed.returncode}: {(resumed.stderr.strip().splitlines() or ['?'])[-1]}")
    if [line.split("skipping damaged checkpoint ")[-1] for line in skipped] != expected_reports:
        problems.append(f"reported {skipped!r}, expected one line each for {expected_reports!r}")
    if not any(line.endswith(f"resuming from {expected_source}") for line in lines):
        problems.append(f"did not resume from {expected_source.name}: {lines!r}")
    if resumed.returncode == 0:
        problems += compare_with_reference(setup["reference"], output)
    verdict = "OK: weights and metrics equal" if not problems else "FAIL: " + "; ".join(problems)
    starts = [Path(line.split("resuming from ")[-1]).name for line in lines if "resuming from" in line]
    reported = f"{len(skipped)} damaged reported, resumed from {starts[-1] if starts else '?'}"
    print(f"damage {name:<18s} {reported} | {verdict}", flush=True)
    for line in skipped:
        print(f"    {line}", flush=True)
    return not problems


def truncate_and_delete(checkpoints: list[Path]) -> tuple[Path, list[str]]:
    newest, second, intact = checkpoints[-1], checkpoints[-2], checkpoints[-3]
    weights = newest / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as handle:
        handle.truncate(size // 2)
    (second / "optimizer.bin").unlink()
    return intact, [
        f"{newest}: truncated file model.safetensors ({size // 2} of {size} bytes)",
        f"{second}: missing file optimizer.bin",
    ]


def drop_manifest(checkpoints: list[Path]) -> tuple[Path, list[str]]:
    (checkpoints[-1] / "COMPLETE").unlink()
    return checkpoints[-2], [f"{checkpoints[-1]}: no completion manifest (the save was interrupted)"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--classes", default="step,eval,checkpoint", help=f"round-robin over these of {CLASSES}")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the output folders of passing trials")
    parser.add_argument("--no-damage", action="store_true", help="skip the damaged-checkpoint tests")
    parser.add_argument(
        "--distributed-timeout", type=int, default=60, help="train.distributed_timeout_seconds of the rank* kills"
    )
    args = parser.parse_args()
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    unknown = set(classes) - set(CLASSES)
    if unknown or not classes:
        parser.error(f"--classes: unknown {sorted(unknown)}; choose from {', '.join(CLASSES)}")

    from conftest import build_tiny_bert
    from datasets_for_tests import write_sentiment_csv

    work = args.workdir or Path(tempfile.mkdtemp(prefix="poolft-fault-"))
    work.mkdir(parents=True, exist_ok=True)
    setup = {
        "work": work,
        "backbone": build_tiny_bert(work / "tiny-bert"),
        "files": write_sentiment_csv(work / "data", train_size=TRAIN_SIZE, eval_size=EVAL_SIZE),
        "reference": work / "reference",
        "reference_2": work / f"reference-{PROCESSES}-processes",
        "keep": args.keep,
        "distributed_timeout": args.distributed_timeout,
    }
    steps_per_epoch = -(-TRAIN_SIZE // BATCH)
    total_steps = steps_per_epoch * EPOCHS
    print(f"poolft fault test in {work}: {total_steps} steps, checkpoint every {SAVE_EVERY}, eval every {EVAL_EVERY}")
    started = time.perf_counter()
    if not (setup["reference"] / "metrics.json").is_file():
        shutil.rmtree(setup["reference"], ignore_errors=True)
        result = poolft_train(run_arguments(setup["backbone"], setup["files"], setup["reference"]), child_environment())
        if result.returncode != 0:
            print(f"reference run failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
            return 1
    print(f"reference run done ({time.perf_counter() - started:.0f} s)", flush=True)
    if any(c.startswith("rank") for c in classes) and not (setup["reference_2"] / "metrics.json").is_file():
        shutil.rmtree(setup["reference_2"], ignore_errors=True)
        arguments = run_arguments(setup["backbone"], setup["files"], setup["reference_2"])
        result = poolft_train(arguments, child_environment(), processes=PROCESSES)
        if result.returncode != 0:
            print(f"{PROCESSES}-process reference run failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
            return 1
        print(f"{PROCESSES}-process reference run done ({time.perf_counter() - started:.0f} s)", flush=True)
    points = fault_points(setup["reference"], total_steps, steps_per_epoch)
    setup["log_lines"] = len((setup["reference"] / "log.jsonl").read_text().splitlines())

    rng = random.Random(args.seed)
    survived = 0
    for index in range(args.trials):
        survived += run_trial(index + 1, classes[index % len(classes)], rng, points, setup)
    passed = survived == args.trials
    if not args.no_damage:
        passed &= damage_test("truncated+missing", setup, truncate_and_delete)
        passed &= damage_test("no-manifest", setup, drop_manifest)
    print(f"survived {survived}/{args.trials}")
    if args.workdir is None and passed:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
