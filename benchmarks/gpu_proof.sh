#!/usr/bin/env bash
# The GPU half of the project in one command, for a machine with CUDA, DALI and PyAV installed
# (signstream installed with `pip install -e .`). Every step writes under OUT (default:
# gpu-proof/), keeps going when one fails, and stays within its own time limit, so the whole
# run fits in about 9 minutes (limits 60 + 200 + 150 + 120 s):
#   nvdec.txt          what NVDEC decodes on GPU 0, as its driver reports it, beside the table
#   pytest-cuda.txt    every cuda-marked test (DALI NVDEC parity, H.264, bf16/fp16, recipes on CUDA)
#   loaders/           the loader benchmark with its NVDEC rows
#   models/            backbone throughput and memory, fp32 / bf16 / fp16
#   steps.txt          each step's exit status and seconds
# Usage: bash benchmarks/gpu_proof.sh [OUT]
set -u
out=${1:-${OUT:-gpu-proof}}
mkdir -p "$out"
py=${PYTHON:-python3}
: > "$out/steps.txt"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    timeout "$limit" "$@" > "$out/$name.txt" 2>&1
    rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$out/steps.txt"
}

{ nvidia-smi -L; "$py" -c "import torch, nvidia.dali, av; print(torch.__version__, torch.cuda.get_device_name(),
  nvidia.dali.__version__, av.__version__)"; } > "$out/machine.txt" 2>&1
step nvdec 60 "$py" -m signstream.loaders.nvdec
step pytest-cuda 200 "$py" -m pytest -q -m cuda -rA -p no:cacheprovider
step loaders 150 "$py" -m signstream.benchmarks.loaders --out "$out/loaders" --quick
step models 120 "$py" -m signstream.benchmarks.models --out "$out/models" --sizes 112,224
