#!/usr/bin/env bash
# The GPU half of the project proven in under 5 minutes, on a machine with CUDA, DALI and PyAV
# (signstream installed with `pip install -e .`). A thin wrapper over
# `python -m signstream.benchmarks.gpu_proof`, which runs each step in its own process under its
# own time limit (env 15 s, nvdec 10, inputs 30, three loader rows 20 + 20 + 25, extraction 70,
# finetune 30, cuda_tests 75: 295 s in all, and the run is capped there) and merges every figure
# into OUT/gpu.json and OUT/gpu.md the moment a step has it; a figure not taken is null with its
# reason. Step logs and per-step results go to OUT/gpu-logs/.
# Usage: bash benchmarks/gpu_proof.sh [OUT] [--no-cuda] [--limit STEP=SECONDS]...
#   OUT defaults to $OUT, else benchmarks/results.
set -u
out=${OUT:-benchmarks/results}
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    out=$1
    shift
fi
exec "${PYTHON:-python3}" -m signstream.benchmarks.gpu_proof --out "$out" "$@"
