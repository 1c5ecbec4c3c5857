"""Reliability and safety: damaged checkpoints, non-finite losses, no unsafe loaders, no network."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import shutil
import socket
import sys
import threading
from pathlib import Path

import pytest
import torch
from datasets_for_tests import write_sentiment_csv
from safetensors.torch import load_file
from transformers import BertModel

import poolft
import poolft.models.modeling
from poolft.cli import main
from poolft.config import ModelConfig, load_config
from poolft.errors import PoolftError
from poolft.models import backbones
from poolft.training.checkpoints import (
    MANIFEST,
    TRAINER_STATE,
    checkpoint_problem,
    resolve_checkpoint,
    write_manifest,
)
from poolft.training.fault_injection import parse_fault_spec
from poolft.training.loop import train

PACKAGE = Path(poolft.__file__).parent

# --------------------------------------------------------------------------------------------
# (a) damaged checkpoints are skipped with a one-line report; "latest" is the newest intact one


def fake_checkpoint(run: Path, step: int) -> Path:
    """A checkpoint folder with accelerate-like files and a valid manifest."""
    folder = run / "checkpoints" / f"step-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(300))
    (folder / "optimizer.bin").write_bytes(os.urandom(200))
    (folder / "rng_state_0.json").write_text("{}")
    (folder / TRAINER_STATE).write_text(json.dumps({"global_step": step}))
    write_manifest(folder)
    return folder


def truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


DAMAGES = {
    "no manifest": (lambda folder: (folder / MANIFEST).unlink(), "no completion manifest"),
    "truncated file": (lambda folder: truncate(folder / "model.safetensors"), "truncated file model.safetensors"),
    "missing file": (lambda folder: (folder / "optimizer.bin").unlink(), "missing file optimizer.bin"),
    "damaged manifest": (lambda folder: (folder / MANIFEST).write_text("{not json"), "damaged completion manifest"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_latest_skips_a_damaged_checkpoint_with_one_line(tmp_path, damage):
    run = tmp_path / "run"
    intact = fake_checkpoint(run, 3)
    damaged = fake_checkpoint(run, 6)
    harm, reason = DAMAGES[damage]
    harm(damaged)
    reports: list[str] = []
    assert resolve_checkpoint(run, "latest", report=reports.append) == intact
    assert len(reports) == 1 and "\n" not in reports[0]
    assert str(damaged) in reports[0] and reason in reports[0]
    assert checkpoint_problem(intact) is None
    # asking for the damaged one by path is an error that says why and what to do
    with pytest.raises(PoolftError, match=reason):
        resolve_checkpoint(run, str(damaged))


def test_latest_falls_back_past_several_damaged_checkpoints(tmp_path):
    """Newest truncated, the next missing a file, an unfinished temporary save: the oldest intact wins."""
    run = tmp_path / "run"
    intact = fake_checkpoint(run, 2)
    truncate(fake_checkpoint(run, 10) / "model.safetensors")
    (fake_checkpoint(run, 8) / "optimizer.bin").unlink()
    partial = run / "checkpoints" / ".tmp-step-12"  # a save killed half-way is never a candidate
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"x")
    reports: list[str] = []
    assert resolve_checkpoint(run, "latest", report=reports.append) == intact
    assert [line.split(": ", 2)[1].rsplit("/", 1)[-1] for line in reports] == ["step-10", "step-8"]
    assert "truncated file model.safetensors" in reports[0] and "missing file optimizer.bin" in reports[1]


def test_latest_is_none_when_nothing_is_intact(tmp_path):
    run = tmp_path / "run"
    (fake_checkpoint(run, 4) / MANIFEST).unlink()
    reports: list[str] = []
    assert resolve_checkpoint(run, "latest", report=reports.append) is None
    assert len(reports) == 1
    assert resolve_checkpoint(tmp_path / "empty", "latest", report=reports.append) is None


def test_fault_spec_is_parsed_strictly():
    assert parse_fault_spec("step:3, eval:6,checkpoint:9") == {("step", 3), ("eval", 6), ("checkpoint", 9)}
    for bad in ("step", "step:x", "train:3"):
        with pytest.raises(ValueError, match="POOLFT_FAULT_AT"):
            parse_fault_spec(bad)


# --------------------------------------------------------------------------------------------
# (b) a non-finite loss stops the run (the last checkpoint stays intact) or is skipped and counted


def small_run(tmp_path: Path, backbone: Path, output: str, *extra: str) -> list[str]:
    files = write_sentiment_csv(tmp_path / "data", train_size=64, eval_size=16)
    return [
        f"--data.data_files={json.dumps(files)}",
        "--data.text_column=text",
        f"--model.backbone={backbone}",
        f"--train.output_dir={tmp_path / output}",
        "--train.batch_size=16",  # 4 optimiser steps per epoch
        "--train.epochs=2",
        "--train.save_every_steps=2",
        "--train.learning_rate=1e-3",
        "--train.head_learning_rate=1e-2",
        "--train.mixed_precision=no",
        "--train.progress=false",
        "--train.torch_threads=1",
        *extra,
    ]


@pytest.fixture
def nan_loss_at(monkeypatch):
    """``nan_loss_at({5})``: the training loss of optimiser steps 5 is NaN (one batch per step)."""

    def install(steps: set[int]) -> None:
        real = poolft.models.modeling.classification_loss
        calls = {"training": 0}

        def loss_with_nan(config, logits, labels, **options):
            loss = real(config, logits, labels, **options)
            if loss is not None and torch.is_grad_enabled():  # training, not evaluation
                calls["training"] += 1
                if calls["training"] in steps:
                    return loss * float("nan")
            return loss

        monkeypatch.setattr(poolft.models.modeling, "classification_loss", loss_with_nan)

    return install


def test_nonfinite_loss_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, tiny_bert_dir, nan_loss_at, capsys):
    nan_loss_at({5})
    arguments = small_run(tmp_path, tiny_bert_dir, "run")
    assert main(["train", *arguments]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("poolft: error:")]
    assert len(error) == 1, error
    assert error[0].startswith("poolft: error: the loss became NaN/inf at step 5"), error
    assert "train.nonfinite_loss=skip" in error[0]
    run = tmp_path / "run"
    assert not (run / "model.safetensors").exists() and not (run / "metrics.json").exists()
    reports: list[str] = []
    latest = resolve_checkpoint(run, "latest", report=reports.append)
    assert latest is not None and latest.name == "step-4" and reports == []
    assert json.loads((latest / TRAINER_STATE).read_text())["global_step"] == 4
    weights = load_file(latest / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    # the last good checkpoint is usable: without the NaN the run resumes and completes
    nan_loss_at(set())
    assert main(["train", *arguments, "--train.resume_from_checkpoint=latest"]) == 0
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 8


def test_nonfinite_loss_skip_finishes_and_counts_skipped_steps(tmp_path, tiny_bert_dir, nan_loss_at):
    nan_loss_at({3, 6})
    metrics = train(load_config(None, small_run(tmp_path, tiny_bert_dir, "run", "--train.nonfinite_loss=skip")))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_nonfinite_steps"] == saved["skipped_nonfinite_steps"] == 2
    assert saved["global_step"] == 8
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    assert math.isfinite(saved["final"]["loss"])


# --------------------------------------------------------------------------------------------
# (c) no unsafe deserialisation in the package; remote code is opt-in


def package_calls():
    """(file, line, dotted name, call node) for every call in the poolft package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        imported = {}  # local name -> "module.name" for from-imports
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                yield path.relative_to(PACKAGE.parent), node.lineno, imported.get(name, name), node


def keyword_is(node: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in node.keywords)


def test_package_never_uses_unsafe_loaders():
    problems = []
    for path, line, name, node in package_calls():
        if name in ("torch.load", "torch.serialization.load") and not keyword_is(node, "weights_only", True):
            problems.append(f"{path}:{line} {name} without weights_only=True")
        if name in ("yaml.load", "yaml.load_all", "yaml.full_load", "yaml.unsafe_load", "yaml.unsafe_load_all"):
            problems.append(f"{path}:{line} {name} (use yaml.safe_load)")
        if name.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "marshal", "joblib") and (
            name.endswith(("load", "loads", "Unpickler"))
        ):
            problems.append(f"{path}:{line} {name}")
        if keyword_is(node, "trust_remote_code", True) or keyword_is(node, "weights_only", False):
            problems.append(f"{path}:{line} {name} with trust_remote_code=True / weights_only=False")
    assert problems == []


def test_the_scan_finds_what_it_looks_for(tmp_path, monkeypatch):
    """The scanner itself: a file with each forbidden call is reported."""
    bad = tmp_path / "pkg"
    bad.mkdir()
    (bad / "__init__.py").write_text(
        "import pickle, torch, yaml\nfrom pickle import loads\n"
        "torch.load('a')\ntorch.load('a', weights_only=False)\nyaml.load('x')\npickle.load(f)\nloads(b'')\n"
        "torch.load('a', weights_only=True)\nyaml.safe_load('x')\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", bad)
    names = [name for _, _, name, _ in package_calls()]
    assert names.count("torch.load") == 3 and "pickle.loads" in names
    with pytest.raises(AssertionError):
        test_package_never_uses_unsafe_loaders()


def test_trust_remote_code_is_off_by_default():
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    assert fields["trust_remote_code"].default is False
    assert load_config(None, []).model.trust_remote_code is False


# --------------------------------------------------------------------------------------------
# (d) pickle weights: tensors only (weights_only loading); a pickle carrying code is refused


class RunsCode:
    """Unpickling this runs ``open(marker, "w")``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_only_backbone(source: Path, target: Path, extra: dict | None = None) -> Path:
    shutil.copytree(source, target)
    state = BertModel.from_pretrained(source).state_dict()
    (target / "model.safetensors").unlink()
    torch.save({**state, **(extra or {})}, target / "pytorch_model.bin")
    return target


def test_pickle_only_backbone_is_refused_unless_allowed(tmp_path, tiny_bert_dir):
    """A folder with only ``pytorch_model.bin`` is refused; with the flag it loads as tensors only."""
    folder = pickle_only_backbone(tiny_bert_dir, tmp_path / "pickle-bert")
    with pytest.raises(PoolftError, match="allow_pickle_weights"):
        backbones.build_model(str(folder), "text", ModelConfig(), ["neg", "pos"])
    model = backbones.build_model(str(folder), "text", ModelConfig(allow_pickle_weights=True), ["neg", "pos"])
    expected = load_file(tiny_bert_dir / "model.safetensors")
    loaded = model.encoder.state_dict()
    assert torch.equal(loaded["embeddings.word_embeddings.weight"], expected["embeddings.word_embeddings.weight"])


def test_pickle_backbone_with_code_is_refused_without_running_it(tmp_path, tiny_bert_dir):
    marker = tmp_path / "code-ran"
    folder = pickle_only_backbone(tiny_bert_dir, tmp_path / "evil-bert", {"payload": RunsCode(marker)})
    with pytest.raises(PoolftError):
        backbones.build_model(str(folder), "text", ModelConfig(), ["neg", "pos"])
    with pytest.raises(PoolftError):  # even when allowed: weights_only=True refuses the code
        backbones.build_model(str(folder), "text", ModelConfig(allow_pickle_weights=True), ["neg", "pos"])
    assert not marker.exists()


def test_checkpoint_pickles_with_code_are_not_run_on_resume(tmp_path, tiny_bert_dir):
    """accelerate reads a checkpoint's ``*.bin``/``*.pkl`` with ``torch.load(weights_only=True)``."""
    arguments = small_run(tmp_path, tiny_bert_dir, "run", "--train.max_steps=2")
    train(load_config(None, arguments))
    checkpoint = tmp_path / "run" / "checkpoints" / "step-2"
    marker = tmp_path / "code-ran"
    resume = load_config(None, [*arguments, "--train.resume_from_checkpoint=latest"])
    # accelerate's own RNG pickle: its loading error is swallowed; poolft restores RNG from its JSON
    torch.save({"payload": RunsCode(marker)}, checkpoint / "random_states_0.pkl")
    write_manifest(checkpoint)
    assert train(resume)["global_step"] == 2
    assert not marker.exists()
    torch.save({"state": {}, "param_groups": [], "payload": RunsCode(marker)}, checkpoint / "optimizer.bin")
    write_manifest(checkpoint)
    with pytest.raises(PoolftError, match="refused unread"):
        train(resume)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# the network guard installed by conftest.py


def test_network_guard_blocks_outbound_connections(network_guard):
    before = len(network_guard.blocked)
    with pytest.raises(network_guard.error, match="10.255.255.1"):
        socket.create_connection(("10.255.255.1", 80), timeout=1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        with pytest.raises(network_guard.error):
            sock.connect(("10.255.255.1", 80))
        with pytest.raises(network_guard.error):
            sock.connect_ex(("10.255.255.1", 80))
    with pytest.raises(network_guard.error, match="huggingface.co"):  # refused before any DNS lookup
        socket.create_connection(("huggingface.co", 443), timeout=1)
    assert len(network_guard.blocked) == before + 4
    del network_guard.blocked[before:]  # expected here: do not fail this test for them


def test_network_guard_allows_loopback_and_unix_sockets(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(2)
        port = server.getsockname()[1]
        accepted = threading.Thread(target=lambda: [server.accept()[0].close() for _ in range(2)])
        accepted.start()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            assert client.connect_ex(("localhost", port)) == 0
        accepted.join(timeout=5)
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
