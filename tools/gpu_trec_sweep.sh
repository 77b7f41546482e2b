#!/usr/bin/env bash
# TREC-6 Bi-LSTM (6 distilled sentences) settings run side by side on one GPU, each its own
# process, all stopped at BUDGET seconds (SIGTERM: each run checkpoints; `--resume` goes on).
# Needs the folder written by `python tools/device_data.py devdata` (TREC + GloVe rows).
#   BUDGET=200 bash tools/gpu_trec_sweep.sh runs-gpu
set -uo pipefail
DEST=${1:-runs-gpu}
BUDGET=${BUDGET:-200}
mkdir -p "$DEST"
VEC=devdata/glove.6B.50d.trec.safetensors
COMMON=(--device "${DEVICE:-cuda}" --threads 1 --quiet --log-every 50 --checkpoint-every 100
        --data-root devdata --set "vectors=$VEC")
declare -A RUNS=(
  [base]="--preset trec6-bilstm-fixed-6 --full-data-epochs 20"
  [seed1]="--preset trec6-bilstm-fixed-6 --seed 1"
  [seed2]="--preset trec6-bilstm-fixed-6 --seed 2"
  [p400]="--preset trec6-bilstm-fixed-6 --set outer_epochs=400 --set decay_epochs=120"
  [dlr1]="--preset trec6-bilstm-fixed-6 --set distill_lr=1.0"
  [b256]="--preset trec6-bilstm-fixed-6 --set real_batch_size=256 --set outer_epochs=100 --set decay_epochs=30"
  [lr05]="--preset trec6-bilstm-fixed-6 --set lr=0.05"
  [random]="--preset trec6-bilstm-random-6"
)
for name in "${!RUNS[@]}"; do
  # shellcheck disable=SC2086
  timeout -s TERM "$BUDGET" python3 -m fastdistill.cli distill ${RUNS[$name]} "${COMMON[@]}" \
    --out "$DEST/$name" > "$DEST/$name.log" 2>&1 &
done
wait
for name in "${!RUNS[@]}"; do
  echo "== $name: $(grep -h 'test accuracy\|full-data\|interrupted' "$DEST/$name.log" | tr '\n' ' ')"
  grep -h "^iteration" "$DEST/$name.log" | tail -2
done
