#!/usr/bin/env bash
# poolft GPU check (issue 17 item 4): heads in fp32/bf16/fp16 vs CPU fp32, poolft's loop vs the
# length-grouped Trainer in bf16, and the probe sweep on cached states; see scripts/gpu_check.py.
#
# Fits one 10-minute command on a machine with an NVIDIA GPU, torch, transformers, accelerate and
# peft but no `datasets`, no `evaluate`, no MiniLM package and no network. poolft's data and
# training code imports `datasets` and `evaluate` (poolft/data/*.py, poolft/metrics), so this
# check carries their wheels rather than a copy of the loop without them: the check then runs the
# very code `poolft train` runs. The backbone (MiniLM-L6's shape, random weights) and the text set
# are generated on the spot, so nothing else travels.
#
#   scripts/gpu_check.sh --fetch-wheels   here, once (PyPI): datasets, evaluate, dill, multiprocess
#                                         and this machine's transformers, as Python 3.12 wheels in
#                                         .whl/ (about 13 MB; add `/.whl/` to .git/info/exclude)
#   scripts/gpu_check.sh                  on the GPU machine, with .whl carried (`carry: [".whl"]`,
#                                         timeout 600); the wheels are installed to /tmp/gpu-check-site
#                                         when `datasets` is missing there
#   scripts/gpu_check.sh --dry-run        here, on the CPU: tiny model and data, the same code paths
#                                         (tests/test_gpu_check.py runs it)
#
# datasets 5.2 wants pyarrow >= 24: if the GPU machine's is older, EXTRA_WHEELS="pyarrow==24.0.0"
# with --fetch-wheels carries one too (about 45 MB). Section (a) needs none of the wheels.
# Other options go to gpu_check.py (--with-compile, --train-samples N, --workdir DIR, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=.whl

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    transformers_version=$("$PYTHON" -c 'import transformers; print(transformers.__version__)')
    mkdir -p "$WHEELS"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 \
        "transformers==$transformers_version" ${EXTRA_WHEELS:-}
    ls -l "$WHEELS"
    exit 0
fi

if ! "$PYTHON" -c 'import datasets, evaluate' 2>/dev/null; then
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "gpu_check: datasets/evaluate are missing and no wheels in $WHEELS; run scripts/gpu_check.sh --fetch-wheels here and carry .whl" >&2
        exit 2
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu-check-site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
fi
# poolft from this checkout, installed or not (the GPU machine gets the working tree only)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "$PYTHON" scripts/gpu_check.py "$@"
