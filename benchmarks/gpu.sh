#!/usr/bin/env bash
# Measure a CUDA machine with hwlm's bench stage, from the source tree, in about 6-8 minutes:
#   1. hwlm hw                   what the machine is
#   2. hwlm bench peak           matmul FLOP/s per dtype, memory and host-to-device bandwidth
#   3. hwlm bench train          gpt2-124m, bf16 autocast, torch.compile
#   4. hwlm bench infer          gpt2-124m, bf16 weights, prefill/decode over a batch x prompt grid
#   5. hwlm bench calibrate      the planner calibration (this-machine; and the catalog id if given)
#   6. generate_speed.py         gpt2-124m batch-1 decode, eager against CUDA graphs (issue 9: >= 4x), fp32 and bf16
#   7. gpu_compress.py           decode tokens/s of bf16 / w8a16 / w4a16 / w8a8 / 2:4 at batch 1, 8, 32 (eager;
#                                batch 1 also as a CUDA graph) and dense against 2:4 sparse GEMMs
#   8. pytest                    the tests that need a CUDA device
# Records go to $OUT if set, else runs/bench. hwlm need not be installed: this runs
# `PYTHONPATH=src python3 -m hwlm`. Each step has its own time limit, so one slow step cannot
# eat the others' time; a failed step is reported and the rest still run.
#
#   bash benchmarks/gpu.sh                      # default
#   OUT=/tmp/h200 CATALOG_ID=h200 bash benchmarks/gpu.sh
#   STEPS="hw decode-graphs compress pytest" bash benchmarks/gpu.sh   # only these steps
set -uo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEST="${OUT:-runs/bench}"
mkdir -p "$DEST"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
HWLM=("$PY" -m hwlm)  # an array, not a function: `timeout` runs programs, not shell functions
failed=()

step() {  # step NAME SECONDS CMD...: run with a time limit, log to $DEST/NAME.log, keep going on failure
    local name=$1 limit=$2; shift 2
    if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then echo "== $name: not in STEPS"; return; fi
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$DEST/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
}

step hw 30 "${HWLM[@]}" hw
"${HWLM[@]}" hw --json > "$DEST/hw.json" 2>/dev/null || true

step peak 90 "${HWLM[@]}" bench peak --out "$DEST/peak.json"

step train 180 "${HWLM[@]}" bench train --model gpt2-124m --precision bf16 --compile --batch 16 --seq 1024 \
    --steps 200 --warmup 10 --peak-record "$DEST/peak.json" --out "$DEST/train-gpt2-124m.json"

step infer 100 "${HWLM[@]}" bench infer --model gpt2-124m --precision bf16 --batch-sizes 1,8,32 \
    --prompt-lens 128,512 --new-tokens 64 --repeats 3 --out "$DEST/infer-gpt2-124m.json"

records=()
for f in peak train-gpt2-124m infer-gpt2-124m; do
    [ -f "$DEST/$f.json" ] && records+=("$DEST/$f.json")
done
if [ "${#records[@]}" -gt 0 ]; then
    step calibrate 30 "${HWLM[@]}" bench calibrate "${records[@]}" --hardware this-machine --out "$DEST/calibration-this-machine.json"
    if [ -n "${CATALOG_ID:-}" ]; then
        step calibrate-catalog 30 "${HWLM[@]}" bench calibrate "${records[@]}" --hardware "$CATALOG_ID" \
            --out "$DEST/calibration-$CATALOG_ID.json"
    fi
fi

step decode-graphs 150 "$PY" benchmarks/generate_speed.py --device cuda --new-tokens 64 --repeats 3

step pytest 120 "$PY" -m pytest -q -p no:cacheprovider -k "cuda or gpu" tests/test_model.py tests/test_distributed_gpu.py \
    tests/test_compress_decoding.py

step compress 240 "$PY" benchmarks/gpu_compress.py --device cuda --compile-batches 1 --out "$DEST/gpu-compress.json"

echo "records in $DEST (total ${SECONDS} s)"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "failed steps: ${failed[*]}" >&2
    exit 1
fi
