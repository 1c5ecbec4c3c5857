#!/usr/bin/env bash
# Run every poolft benchmark and write the tables, hardware, commands and date to a Markdown file.
#
#   scripts/bench_all.sh                  full run (long: tens of minutes on a small CPU);
#                                         writes scripts/BENCHMARKS.md
#   QUICK=1 scripts/bench_all.sh          smoke run (--quick everywhere, a few minutes);
#                                         writes /tmp/poolft-BENCHMARKS.quick.md, never BENCHMARKS.md
#   OUT=path.md scripts/bench_all.sh      write somewhere else
#   THREADS=1 scripts/bench_all.sh        pass --threads 1 to every benchmark (a busy, shared machine)
#   IMAGE_ARGS="--train-samples 1000 --image-size 56" scripts/bench_all.sh   smaller image jobs
#   PROBE_ARGS="--train-samples 8000" scripts/bench_all.sh   a cheaper probe benchmark (default: full split)
#   PYTHON=.venv/bin/python scripts/bench_all.sh
#
# Benchmarks: bench_poolers.py, bench_train.py (text and --image), bench_precision.py (text and
# --image; both with train.compile rows), bench_mfu.py (on bench_train's poolft text run),
# bench_fast_kernels.py, bench_compile.py, bench_inference.py,
# bench_probe_sweep.py (the SST-2 probe recipe, cached sweep vs uncached runs). A failing
# benchmark is reported in the file and the others still run; the exit status is 1 if any failed.
# Run it on an idle machine: every header prints the load average.

set -uo pipefail

cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
PYTHON=${PYTHON:-python}
if [[ "${QUICK:-0}" == "1" ]]; then
    MODE=quick
    FLAGS=(--quick)
    OUT=${OUT:-/tmp/poolft-BENCHMARKS.quick.md}
else
    MODE=full
    FLAGS=()
    OUT=${OUT:-scripts/BENCHMARKS.md}
fi
if [[ -n "${THREADS:-}" ]]; then
    FLAGS+=(--threads "$THREADS")
fi

# what is benchmarked, taken before anything is written (the report itself is a tracked file)
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' (with local changes)')"
COMMAND="$( [[ $MODE == quick ]] && echo 'QUICK=1 ')$( [[ -n "${THREADS:-}" ]] && echo "THREADS=$THREADS ")$( [[ -n "${IMAGE_ARGS:-}" ]] && echo "IMAGE_ARGS=\"$IMAGE_ARGS\" ")$( [[ -n "${PROBE_ARGS:-}" ]] && echo "PROBE_ARGS=\"$PROBE_ARGS\" ")scripts/bench_all.sh"

WORK=$(mktemp -d -t poolft-bench-all-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
SECTIONS=()
FAILED=()
STARTED=$(date +%s)

# run_section NAME TITLE COMMAND...: run it, show its output, keep stdout for the report
run_section() {
    local name=$1 title=$2
    shift 2
    echo
    echo "=== $title"
    echo "\$ $*"
    local begin=$SECONDS
    "$@" 2>"$WORK/$name.err" | tee "$WORK/$name.out"
    local status=${PIPESTATUS[0]}
    echo "$status" >"$WORK/$name.status"
    echo "$(( SECONDS - begin ))" >"$WORK/$name.seconds"
    printf '%s\n' "$*" >"$WORK/$name.cmd"
    echo "$title" >"$WORK/$name.title"
    SECTIONS+=("$name")
    if [[ $status -ne 0 ]]; then
        FAILED+=("$name")
        echo "!!! $name failed (exit $status); last lines of its stderr:"
        tail -n 20 "$WORK/$name.err"
    fi
}

run_section poolers "Pooling heads vs backbone step (bench_poolers.py)" \
    "$PYTHON" scripts/bench_poolers.py "${FLAGS[@]}"
run_section train_text "Training: poolft train vs transformers.Trainer, text (bench_train.py)" \
    "$PYTHON" scripts/bench_train.py "${FLAGS[@]}" --workdir "$WORK/train"
run_section train_image "Training: poolft train vs transformers.Trainer, images (bench_train.py --image)" \
    "$PYTHON" scripts/bench_train.py --image "${FLAGS[@]}" ${IMAGE_ARGS:-} --workdir "$WORK/train"
run_section precision_text "Precision: float32 vs bf16, text (bench_precision.py)" \
    "$PYTHON" scripts/bench_precision.py "${FLAGS[@]}"
run_section precision_image "Precision: float32 vs bf16, images (bench_precision.py --image)" \
    "$PYTHON" scripts/bench_precision.py --image "${FLAGS[@]}" ${IMAGE_ARGS:-}
MFU_RUN=()
if [[ -f "$WORK/train/text/poolft/metrics.json" ]]; then
    MFU_RUN=(--run-dir "$WORK/train/text/poolft")  # the poolft text run of bench_train, not a new one
fi
run_section mfu "Model FLOPs utilisation (bench_mfu.py)" \
    "$PYTHON" scripts/bench_mfu.py "${FLAGS[@]}" "${MFU_RUN[@]}"
run_section fast_kernels "Fast kernels: CPU dropout and folded clipping vs torch (bench_fast_kernels.py)" \
    "$PYTHON" scripts/bench_fast_kernels.py "${FLAGS[@]}"
run_section compile "train.compile: eager vs compiled steps, dropout under inductor, graphs (bench_compile.py)" \
    "$PYTHON" scripts/bench_compile.py "${FLAGS[@]}"
INFERENCE_MODEL=()
if [[ -f "$WORK/train/text/poolft/metrics.json" ]]; then
    INFERENCE_MODEL=(--model-dir "$WORK/train/text/poolft")  # bench_train's trained SST-2 model: accuracy means something
fi
run_section inference "Inference: poolft predict / eval / ONNX Runtime vs transformers.pipeline (bench_inference.py)" \
    "$PYTHON" scripts/bench_inference.py "${FLAGS[@]}" "${INFERENCE_MODEL[@]}"
PROBE_FLAGS=()
[[ $MODE == quick ]] && PROBE_FLAGS=(--quick)  # no --threads: its uncached runs give the backbone every core
run_section probe "Probe track: cached five-head sweep vs uncached runs (bench_probe_sweep.py)" \
    "$PYTHON" scripts/bench_probe_sweep.py "${PROBE_FLAGS[@]}" ${PROBE_ARGS:-}

# ------------------------------------------------------------------------------------------------
# the report
{
    echo "# poolft benchmarks"
    echo
    if [[ $MODE == quick ]]; then
        echo "**Smoke run (\`QUICK=1\`): tiny sizes, the numbers mean nothing.**"
        echo
    fi
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- mode: $MODE; total $(( $(date +%s) - STARTED )) s"
    echo "- poolft commit: $COMMIT"
    echo "- command: \`$COMMAND\`"
    echo "- failed: ${FAILED[*]:-none}"
    echo
    echo "## Hardware"
    echo
    echo '```text'
    (cd scripts && "$PYTHON" -c 'import bench_common; bench_common.print_header("machine")' 2>/dev/null)
    echo '```'
    echo
    echo "Each benchmark prints its own header again (load average at its start and end):"
    echo "timings taken while the machine was busy are not comparable."
    for name in "${SECTIONS[@]}"; do
        echo
        echo "## $(cat "$WORK/$name.title")"
        echo
        echo '```bash'
        cat "$WORK/$name.cmd" | sed "s#$WORK#\$WORK#g"
        echo '```'
        echo
        echo "exit status $(cat "$WORK/$name.status"), $(cat "$WORK/$name.seconds") s"
        echo
        echo '```text'
        sed "s#$WORK#\$WORK#g" "$WORK/$name.out"
        echo '```'
    done
} >"$OUT"

echo
echo "report written to $OUT ($(( $(date +%s) - STARTED )) s); failed: ${FAILED[*]:-none}"
[[ ${#FAILED[@]} -eq 0 ]]
