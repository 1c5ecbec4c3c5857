"""Rerun one ``poolft sweep`` record on this machine and say whether it reproduces bit for bit.

Writes the record's ``hyperparameters`` (model, data and train sections) to a YAML file in
``--workdir``, trains it with ``poolft train --config`` there (its output folder replaced by one in
the workdir), and prints the record's final metrics, the rerun's, both machines' CPU kinds
(``poolft.training.run_info.numeric_kind``: vendor and matrix features) and ``identical`` or
``different``. Exit status: 0 when identical, 1 when not.

Usage::

    python scripts/rerun_record.py recipes/results/fashion_mnist/finetune/rate-search/stock-rate0.0003.json \
        --workdir /tmp/rerun
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("record", type=Path, help="a JSON record written by poolft sweep")
    parser.add_argument("--workdir", type=Path, required=True, help="new folder for the config and the run")
    args = parser.parse_args()
    from poolft.training.run_info import numeric_kind

    record = json.loads(args.record.read_text(encoding="utf-8"))
    config = {section: dict(record["hyperparameters"][section]) for section in ("model", "data", "train")}
    config["train"].update(output_dir=str(args.workdir / "run"), progress=False, save_model=False)
    args.workdir.mkdir(parents=True, exist_ok=False)
    config_file = args.workdir / "config.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "poolft", "train", "--config", str(config_file)], check=True)
    rerun = json.loads((args.workdir / "run" / "metrics.json").read_text(encoding="utf-8"))["final"]
    keys = [key for key in record["final"] if key in rerun]
    print(f"record ({numeric_kind(record['hardware'])}): " + ", ".join(f"{k} {record['final'][k]!r}" for k in keys))
    print(f"rerun  ({numeric_kind()}): " + ", ".join(f"{k} {rerun[k]!r}" for k in keys))
    same = all(record["final"][key] == rerun[key] for key in keys)
    print("identical" if same else "different")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
