#!/usr/bin/env bash
# One prepared GPU session (build, input-error diagnosis, CUDA tests, a TREC-6 settings sweep,
# GPU benchmarks); results under $OUT (at most 8 files come back: the sweep is one tarball).
# On the lent H200 (its own python3/torch, nothing installable), with devdata/ carried
# (`python tools/device_data.py devdata` here first):
#   bash tools/gpu_check.sh
# Each stage is time-boxed so a hang in one leaves the others' results.
set -uo pipefail
OUT=${OUT:-/tmp/fastdistill-gpu}
SWEEP_S=${SWEEP_S:-200}
TOTAL_S=${TOTAL_S:-570}  # the whole script, to end inside the device call's limit
mkdir -p "$OUT"
M="$OUT/machine.txt"
stamp() { echo "[$(date -u +%T)] $*" >> "$M"; }
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0], 'cxx11abi', torch._C._GLIBCXX_USE_CXX11_ABI)"
  g++ --version | head -1; nvcc --version | tail -1; nproc
} > "$M" 2>&1
# build against the machine's torch, Hopper only (the wheel-style default adds sm_80 + PTX)
if [ -z "${SKIP_BUILD:-}" ]; then
  FASTDISTILL_REQUIRE_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS=16 timeout 240 \
    python3 -m pip install --no-deps --no-build-isolation -e . > "$OUT/build.log" 2>&1
  stamp "build exit $?"
fi
python3 -m fastdistill.cli info >> "$M" 2>&1
timeout 60 python3 tools/gpu_diag.py > "$OUT/diag.txt" 2>&1
stamp "diag exit $?"
# the TREC-6 sweep runs beside the tests (it is launch-bound; the tests are short)
SWEEP=""
if [ "$SWEEP_S" -gt 0 ]; then  # SWEEP_S=0 skips it
  BUDGET=$SWEEP_S bash tools/gpu_trec_sweep.sh runs-gpu > "$OUT/sweep.txt" 2>&1 &
  SWEEP=$!
fi
# CUDA tests of every op and the engine (marker: cuda), in 6 worker processes so a crash in
# one test is reported and the rest still run
FASTDISTILL_DATA_ROOT=$PWD/devdata timeout 210 python3 -m pytest tests -m cuda -q -n 6 \
  -p no:cacheprovider -o addopts="" -rfE > "$OUT/cuda_tests.log" 2>&1
stamp "cuda tests exit $?"
if [ -n "$SWEEP" ]; then
  wait $SWEEP
  stamp "sweep done"
  tar czf "$OUT/sweep.tgz" runs-gpu 2>> "$M"
fi
# GPU benchmarks on a quiet GPU: engine (fused vs unroll), ops, nearest embedding, text engine
LEFT=$((TOTAL_S - SECONDS - 10)); [ $LEFT -lt 30 ] && LEFT=30
stamp "bench gets ${LEFT}s"
timeout $LEFT python3 -m pytest benchmarks -m cuda --benchmark-only -q -p no:cacheprovider \
  -o addopts="" --benchmark-max-time=0.5 --benchmark-min-rounds=3 \
  --benchmark-json="$OUT/bench.json" > "$OUT/bench.log" 2>&1
stamp "bench exit $?"
tail -4 "$OUT/cuda_tests.log" >> "$M"; cat "$OUT/sweep.txt" >> "$M" 2>/dev/null; tail -3 "$OUT/bench.log" >> "$M"
cat "$M"
