#!/usr/bin/env bash
# One device call's worth of GPU work: build, CUDA tests, the bench shapes against the original
# code (interleaved), and, with the time left, resumable CIFAR-10 distillation.
#
#   bash benchmarks/gpu_session.sh prepare   # here: fill .gpu/ (ignored) with what travels
#   bash benchmarks/gpu_session.sh run       # there, with carry [".gpu"]; results under $OUT
#
# The device machine sees only the repository, so `prepare` copies the original-code harness
# (../shared/tools/original), the original code's Python files ($REFSTUDY/ilia, see the
# harness README) and the CIFAR-10 JPEG tarball (19 MB) into .gpu/. A CIFAR-10 checkpoint that
# came back in an earlier call's files can be put in .gpu/cifar/ to resume it.
#
# Budget (seconds of the command itself, default 540): each stage gets what is left, so a
# slow build or a hang never costs the results already written. Environment: BUDGET_S,
# SHAPES (default "A B C D E F"), ITERS (timed per side per round, default 8), ROUNDS (2),
# CIFAR_CELLS (default sldd-fixed; empty: skip), STAGES (default "build tests bench cifar"),
# DEVICE (default cuda), ORIG_PY (the original's python, default python3). A dry run here:
# `PATH=.venv/bin:$PATH ORIG_PY=$REFSTUDY/venv/bin/python DEVICE=cpu STAGES=bench SHAPES=B ITERS=2 ROUNDS=1`.
set -uo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
GPU=$HERE/.gpu

prepare() {
  local ref=${REFSTUDY:-/tmp/refstudy} shared=${SHARED:-$HERE/../shared}
  mkdir -p "$GPU/ilia" "$GPU/data/cifar10" "$GPU/cifar"
  cp -r "$shared/tools/original" "$GPU/"
  (cd "$ref/ilia" && find . -name '*.py' -not -path './text_results/*' -print0 |
    xargs -0 -I{} cp --parents {} "$GPU/ilia/")
  cp "$shared/data/cifar10/CIFAR-10-images-jpeg.tar.gz" "$GPU/data/cifar10/"
  grep -qx '/.gpu/' "$HERE/.gitignore" || echo '/.gpu/' >>"$HERE/.gitignore"
  du -sh "$GPU"
}

run() {
  local out=${OUT:-/tmp/gpu-session} budget=${BUDGET_S:-540} t0
  local stages=" ${STAGES:-build tests bench cifar} " device=${DEVICE:-cuda}
  t0=$(date +%s)
  left() { echo $((budget - ($(date +%s) - t0))); }
  want() { [[ $stages == *" $1 "* ]]; }
  mkdir -p "$out"
  cd "$HERE" || exit 1
  {
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import sys, torch; print("torch", torch.__version__, "python", sys.version.split()[0])'
    nproc
  } >"$out/machine.txt" 2>&1
  cat "$out/machine.txt"

  if want build; then
    local cap
    cap=$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
    TORCH_CUDA_ARCH_LIST=$cap MAX_JOBS=$(nproc) timeout "$(left)" \
      python3 -m pip install --no-deps --no-build-isolation -e . >"$out/build.log" 2>&1 ||
      { tail -n 40 "$out/build.log"; return 1; }
    echo "built in $(($(date +%s) - t0)) s"
  fi

  # CUDA tests: the op tables and engine tests run their cuda rows when a GPU is present
  if want tests; then
    timeout "$(($(left) / 4))" python3 -m pytest -q -p no:cacheprovider tests/ops tests/engine \
      >"$out/cuda_tests.txt" 2>&1
    tail -n 3 "$out/cuda_tests.txt"
  fi

  # interleaved: original, fastdistill, original, fastdistill ... per shape
  local harness=$GPU/original/run_original.py shapes=${SHAPES:-A B C D E F}
  local iters=${ITERS:-8} rounds=${ROUNDS:-2}
  want bench || shapes=""
  for s in $shapes; do
    for r in $(seq "$rounds"); do
      [ "$(left)" -gt 60 ] || break 2
      orig_args "$s"
      timeout "$(($(left) - 30))" "${ORIG_PY:-python3}" "$harness" --repo "$GPU/ilia" --device "$device" \
        --iters "$iters" --warmup 2 "${ORIG[@]}" >"$out/orig-$s-$r.txt" 2>>"$out/orig.log"
      timeout "$(($(left) - 30))" python3 -m fastdistill.cli bench "$s" --device "$device" \
        --iters "$iters" --warmup 2 --json "$out/ours-$s-$r.json" >>"$out/ours.log" 2>&1
    done
  done
  python3 - "$out" <<'EOF'
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = []
def last_json(path):
    for line in reversed(open(path).read().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}
def times(side, shape):
    ts = []
    for p in sorted(glob.glob(f"{out}/{side}-{shape}-*")):
        if side == "orig":
            ts += last_json(p).get("all_iter_s", [])
        else:
            ts += [t for r in json.load(open(p))["results"] for t in r["times_s"]]
    return ts
for shape in sorted({os.path.basename(p).split("-")[1] for p in glob.glob(f"{out}/orig-*.txt")}):
    o, f = times("orig", shape), times("ours", shape)
    if o and f:
        rows.append({"shape": shape, "orig_min": min(o), "orig_med": statistics.median(o),
                     "ours_min": min(f), "ours_med": statistics.median(f), "n": [len(o), len(f)],
                     "ratio_med": statistics.median(o) / statistics.median(f)})
json.dump(rows, open(f"{out}/side_by_side.json", "w"), indent=1)
for r in rows:
    print(r)
EOF

  # what is left: resumable CIFAR-10 distillation (the checkpoint comes back under $OUT)
  local cells=${CIFAR_CELLS-sldd-fixed}
  if want cifar && [ -n "$cells" ] && [ "$(left)" -gt 90 ]; then
    cp -r "$GPU/cifar/." "$out/cifar/" 2>/dev/null || mkdir -p "$out/cifar"
    FASTDISTILL_DATA_ROOT=$GPU/data timeout -s INT "$(($(left) - 20))" \
      python3 -m fastdistill.cli reproduce table2-cifar10 --cells "$cells" --device "$device" \
      --out "$out/cifar" --quiet >"$out/cifar.log" 2>&1
    tail -n 5 "$out/cifar.log"
  fi
  echo "total $(($(date +%s) - t0)) s"
}

# The original's options for bench shape $1 (the harness README's table), into ORIG.
orig_args() {
  local known=(--train_nets_type known_init --n_nets 1 --test_nets_type same_as_train)
  local soft=(--static_labels 0 --random_init_labels '')
  local text=(--textdata True --ninp 100 --visualize '')
  case $1 in
    A) ORIG=(-- "${known[@]}" --distill_steps 10 --distill_epochs 3 "${soft[@]}") ;;
    B) ORIG=(-- "${known[@]}" --distill_steps 1 --distill_epochs 3 --distill_lr 0.01 "${soft[@]}") ;;
    C) ORIG=(-- --n_nets 4 --distill_steps 10 --distill_epochs 3 "${soft[@]}") ;;
    D) ORIG=(--shape cifar -- --arch AlexCifarNet --distill_lr 0.001 "${known[@]}"
             --distill_steps 10 --distill_epochs 3 "${soft[@]}") ;;
    E) ORIG=(--shape text --text_classes 2 -- "${known[@]}" --arch TextConvNet1 "${text[@]}"
             --maxlen 400 --ntoken 30000 --distilled_images_per_class_per_step 1
             --distill_steps 10 --distill_epochs 3 --distill_lr 0.01 --lr 0.01 "${soft[@]}") ;;
    F) ORIG=(--shape text --text_classes 6 -- --arch TextLSTM2 "${text[@]}" --maxlen 30
             --ntoken 8679 --distilled_images_per_class_per_step 20 --distill_steps 1
             --distill_epochs 2 --distill_lr 1.5 --lr 0.1 "${known[@]}" "${soft[@]}") ;;
    *) ORIG=() ;;
  esac
}

case ${1:-} in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: bash benchmarks/gpu_session.sh prepare|run" >&2; exit 2 ;;
esac
