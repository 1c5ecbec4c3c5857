"""Check: ``train.compile`` on the text families of the compatibility matrix, and its graph count.

For each family in ``tests/families.py`` (tiny configs saved with their own tokenizer classes and
settings, the doubles of the compatibility matrix), it trains ``--steps`` compiled steps of
``poolft train`` with ``--pooler`` on the sentiment test set (batches of several lengths) and
prints the graphs compiled, the steps that compiled and their wall time. With the token axis
dynamic, order-free heads such as ``mean`` should compile one graph for every length; heads whose
shapes depend on each row's length (``window``) compile at every step. A run that fails prints its
error in one line and the exit status is 1.

Usage::

    python scripts/check_compile_families.py --pooler mean --families bert,modernbert,deberta-v2
    python scripts/check_compile_families.py --pooler window                  # every text family
    python scripts/check_compile_families.py --pooler window --families bert --pad-to 32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from datasets_for_tests import write_sentiment_csv  # noqa: E402
from families import TEXT_FAMILIES, build_family  # noqa: E402

from poolft.config import load_config  # noqa: E402
from poolft.training.loop import train  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pooler", default="mean")
    parser.add_argument("--families", default=",".join(TEXT_FAMILIES), help="comma-separated family names")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--pad-to", type=int, default=None, help="data.pad_to_multiple_of (default: none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="compile-families-"))
    files = write_sentiment_csv(root / "data", train_size=8 * args.steps, eval_size=8)
    failed = False
    print(
        f"train.compile, {args.pooler} head, {args.steps} steps of 8, max length 32, pad_to_multiple_of {args.pad_to}"
    )
    for name in args.families.split(","):
        backbone = build_family(name, root / name)
        overrides = [
            f"--data.data_files={json.dumps(files)}",
            "--data.text_column=text",
            "--data.max_length=32",
            f"--model.backbone={backbone}",
            f"--model.pooler={args.pooler}",
            "--train.batch_size=8",
            f"--train.max_steps={args.steps}",
            "--train.mixed_precision=no",
            "--train.progress=false",
            "--train.torch_threads=1",
            "--train.save_at_end=false",
            "--train.compile=true",
            f"--train.output_dir={root / ('run-' + name)}",
        ]
        if args.pad_to:
            overrides.append(f"--data.pad_to_multiple_of={args.pad_to}")
        try:
            metrics = train(load_config(None, overrides))
        except Exception as error:  # a report line per family, the others still run
            failed = True
            print(f"  {name:12s} FAILED {type(error).__name__}: {str(error).splitlines()[0][:200]}", flush=True)
            continue
        stats = metrics["compile"]
        print(
            f"  {name:12s} ok: {stats['graphs']} graphs, compiled in {stats['steps']} of {args.steps} steps "
            f"({stats['seconds']:.1f} s); accuracy {metrics['final']['accuracy']:.3f}",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
