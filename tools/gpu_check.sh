#!/usr/bin/env bash
# One prepared GPU session check (build, CUDA tests, GPU benchmarks), results under $OUT.
# On the lent H200 (its own python3/torch, nothing installable):
#   bash tools/gpu_check.sh            (with OUT set by the device tool)
# Each stage is time-boxed so a hang in one leaves the others' results.
set -uo pipefail
OUT=${OUT:-/tmp/fastdistill-gpu}
mkdir -p "$OUT"
{
  date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])"
} > "$OUT/machine.txt" 2>&1
# build against the machine's torch
FASTDISTILL_REQUIRE_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS=16 timeout 300 \
  python3 -m pip install --no-deps --no-build-isolation -e . > "$OUT/build.log" 2>&1
echo "build exit $?" >> "$OUT/machine.txt"
python3 -m fastdistill.cli info >> "$OUT/machine.txt" 2>&1
# CUDA tests of every op and the engine (markers: cuda); -x off so one failure shows all
timeout 240 python3 -m pytest tests -m cuda -q -p no:cacheprovider -o addopts="" \
  > "$OUT/cuda_tests.log" 2>&1
echo "cuda tests exit $?" >> "$OUT/machine.txt"
# GPU benchmarks: engine (fused vs unroll, random init 4 and 32 nets), ops, nearest embedding
timeout 240 python3 -m pytest benchmarks -m cuda --benchmark-only -q -p no:cacheprovider \
  -o addopts="" --benchmark-json="$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench exit $?" >> "$OUT/machine.txt"
