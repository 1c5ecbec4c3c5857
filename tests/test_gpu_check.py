"""``scripts/gpu_check.sh --dry-run``: the GPU check's code paths run here, on a tiny model and data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_covers_heads_training_and_probe_sweep(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    result = subprocess.run(
        [str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--workdir", str(tmp_path / "check")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for header in (
        "== (a) pooling heads on",
        "== (b) training, bf16: poolft train vs Trainer(group_by_length)",
        "poolft / Trainer train samples/s:",
        "== (c) probe sweep",
        "== summary",
        "(a) heads: PASS",
        "(b) training: PASS",
        "(c) probe sweep: PASS",
    ):
        assert header in result.stdout, header
