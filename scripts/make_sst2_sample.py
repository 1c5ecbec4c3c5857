"""Build the SST-2 sample embedded in poolft (``poolft/data/sample_data``) from ``../shared/data/sst2``.

The whole 872-sentence validation split plus a seeded random sample of the training split, so the
quickstart (`poolft train` with no arguments) runs offline on a fresh clone. Keeps the schema of
the Hub dataset ``nyu-mll/glue`` / ``sst2`` (``idx``, ``sentence``, ``label`` ClassLabel).

    python scripts/make_sst2_sample.py --source ../shared/data/sst2 --train-size 14000
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datasets import load_dataset

TARGET = Path(__file__).resolve().parent.parent / "poolft" / "data" / "sample_data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="../shared/data/sst2")
    parser.add_argument("--train-size", type=int, default=14000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = Path(args.source)
    splits = load_dataset(
        "parquet",
        data_files={"train": str(source / "train.parquet"), "validation": str(source / "validation.parquet")},
    )
    train = splits["train"].shuffle(seed=args.seed).select(range(args.train_size)).sort("idx")
    TARGET.mkdir(parents=True, exist_ok=True)
    train.to_parquet(TARGET / "sst2_train_sample.parquet")
    splits["validation"].to_parquet(TARGET / "sst2_validation.parquet")
    for path in sorted(TARGET.glob("*.parquet")):
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
