#!/usr/bin/env bash
# Full training runs on one NVIDIA GPU (written for an H200): the seed's ResNet-18 on 96x96 images for 10
# epochs and its small VGG on 224x224 images for 8 epochs, with bf16 autocast, channels_last and
# cudnn.benchmark, the data moved to the GPU once and every batch built there; then the chapter-8 networks at
# the book's sizes and recipes (AlexNet and NiN at 224, GoogLeNet, DenseNet and RegNetX-32 at 96, the BatchNorm
# LeNets at 28; ZOO=0 skips them, ZOO_PARALLEL=3 runs them as 3 processes sharing the GPU), and the
# time-to-accuracy recipes `fast` and `fast-long` (RECIPES=0 skips them; goal there: >= 0.94 in <= 30 s,
# whole command). First of all, the budgets of issue 23: `cnnlab train --recipe R --budget B` for B in
# $BUDGETS (default "15s 30s"; BUDGETS= skips them), R in $BUDGET_RECIPES (default "fast fast-long"), seeds 0 to
# $BUDGET_SEEDS-1 (default 3), each timed start to exit, with where its seconds went (goal: >= 0.94 in 15 s, whole
# command). Then ResNet-18, VGG (MODELS=0 skips both), the recipes, the zoo: the most wanted first. Prints seconds
# per epoch, training images/s and test accuracy of each. Goal: ResNet-18 >= 0.93 test accuracy in <= 60 s of training.
# Run on an H200 on 2026-11-30 (ZOO_PARALLEL=3): the figures are in the README, the log in
# benchmarks/results/gpu_h200.log. Also checked end to end on a CPU with DEVICE=cpu, below.
#
#   bash benchmarks/gpu.sh                         # from anywhere; it works in the repository root
#   RESNET_EPOCHS=1 VGG_EPOCHS=1 ZOO_EPOCHS=1 bash benchmarks/gpu.sh   # a quick check of the set-up
#   COMPILE=1 bash benchmarks/gpu.sh               # also torch.compile the model (costs its compile time)
#   EXTRA="--batch-size 256 --lr 0.1" bash ...     # more options for both `cnnlab train` runs
#   DEVICE=cpu EXTRA="--num-train 512 --num-val 512" RESNET_EPOCHS=1 VGG_EPOCHS=1 bash ...  # test the script
#   BUDGETS=15s BUDGET_SEEDS=1 MODELS=0 RECIPES=0 ZOO=0 bash benchmarks/gpu.sh   # one budgeted run per recipe
#   DEVICE=cpu BUDGETS=20s BUDGET_SEEDS=1 BUDGET_RECIPES=fast MODELS=0 RECIPES=0 ZOO=0 bash ...  # test that part
#
# Python: the first of $PYTHON, .venv/bin/python and python3 whose torch sees a CUDA GPU; cnnlab is imported
# from src/ when it is not installed. With no such Python it makes .venv (`pip install torch -e .`), which
# needs a network. Data: the four Fashion-MNIST files in $CNNLAB_DATA, data/, data/fashion-mnist,
# /usr/share/datasets/fashion-mnist or ~/.cache/cnnlab/fashion-mnist; where none has them it says how to
# bring them along.
set -euo pipefail
cd "$(dirname "$0")/.."

RESNET_EPOCHS=${RESNET_EPOCHS:-10}
VGG_EPOCHS=${VGG_EPOCHS:-8}
ZOO_EPOCHS=${ZOO_EPOCHS:-10}  # the book's
EXTRA=${EXTRA:-}
DEVICE=${DEVICE:-cuda}
[ "${COMPILE:-0}" = 1 ] && EXTRA="$EXTRA --compile"

# ---- Python with a CUDA torch --------------------------------------------------------------------------
has_cuda_torch() {
  "$1" -c "import sys, torch; sys.exit(0 if '$DEVICE' == 'cpu' or torch.cuda.is_available() else 1)" 2>/dev/null
}
PY=""
for candidate in "${PYTHON:-}" .venv/bin/python python3; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && has_cuda_torch "$candidate"; then
    PY=$candidate
    break
  fi
done
if [ -z "$PY" ]; then
  echo "no Python here has a CUDA build of torch; making .venv with one (this needs a network) ..."
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check torch -e .
  PY=.venv/bin/python
  has_cuda_torch "$PY" || { echo "gpu.sh: torch in .venv sees no CUDA GPU; is this a GPU machine?" >&2; exit 1; }
fi
if ! "$PY" -c 'import cnnlab' 2>/dev/null; then
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # cnnlab needs only torch, numpy, tqdm, matplotlib
fi

# ---- data ----------------------------------------------------------------------------------------------
have_all() {
  local d=$1 f
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$d/$f.gz" ] || [ -f "$d/$f" ] || return 1
  done
}
DATA=""
for d in "${CNNLAB_DATA:-}" data data/fashion-mnist /usr/share/datasets/fashion-mnist \
         "$HOME/.cache/cnnlab/fashion-mnist"; do
  if [ -n "$d" ] && have_all "$d"; then DATA=$d; break; fi
done
if [ -z "$DATA" ]; then
  cat >&2 <<'EOF'
gpu.sh: Fashion-MNIST is not on this machine. Bring it along in the repository's data/ folder (30 MB):
  on a machine that has it, in the repository root:
    mkdir -p data && cp /usr/share/datasets/fashion-mnist/*-ubyte.gz data/    # or ~/.cache/cnnlab/fashion-mnist
    echo /data/ >> .git/info/exclude      # keep it out of git; carry it instead (device runs: carry ["data"])
  or, where there is a network: `cnnlab data download --dir data`
EOF
  exit 2
fi

# ---- the runs ------------------------------------------------------------------------------------------
echo "== $(date -u +%FT%TZ)  $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')"
"$PY" - "$DEVICE" <<'EOF'
import sys, torch
from cnnlab.bench import matmul_flops
device = sys.argv[1]
name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
n = 8192 if device.startswith("cuda") else 1024
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {name}; matmul {n}^3: "
      f"bf16 {matmul_flops(n, torch.bfloat16, device=device) / 1e12:.1f} TFLOP/s, "
      f"fp32 {matmul_flops(n, torch.float32, device=device) / 1e12:.1f} TFLOP/s")
EOF
echo "data: $DATA"

summarize() {  # $1: name, $2: run folder, $3 and $4: start and end of the whole command in ns
  # Per-epoch figures from metrics.jsonl; the test accuracy is the command's own last line (best.pt, fp32).
  "$PY" - "$@" <<'EOF'
import json, statistics, sys
name, run_dir, wall = sys.argv[1], sys.argv[2], (int(sys.argv[4]) - int(sys.argv[3])) / 1e9
rows = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
seconds = [r["seconds"] for r in rows]
print(f"{name}: {len(rows)} epochs, {statistics.median(seconds):.2f} s per epoch (median; first "
      f"{seconds[0]:.2f} s), {sum(seconds):.1f} s training+validation, {wall:.1f} s whole command; "
      f"{statistics.median(r['images_per_s'] for r in rows):,.0f} training images/s; "
      f"last epoch's validation accuracy {rows[-1]['val_acc']:.4f}")
EOF
}

train() {  # $1: name, then `cnnlab train` options
  local name=$1 out="runs/gpu-$1"
  shift
  rm -rf "$out"
  echo
  echo "== $name: cnnlab train $* --device $DEVICE --bf16 --channels-last $EXTRA"
  local start end
  start=$(date +%s%N)
  # shellcheck disable=SC2086  # EXTRA holds several options
  "$PY" -m cnnlab train "$@" --device "$DEVICE" --bf16 --channels-last --no-progress --data-dir "$DATA" \
    --out "$out" $EXTRA
  end=$(date +%s%N)
  summarize "$name" "$out" "$start" "$end"
}

zoo_stream() {  # the chapter-8 models named, one after another
  local model
  for model in "$@"; do
    train "$model" --model "$model" --epochs "$ZOO_EPOCHS"  # each at its recipe's (the book's) input size
  done
}

budget_run() {  # $1: recipe, $2: budget, $3: seed; the user's command as typed, bf16 and the rest by default
  local name="budget-$1-$2-seed$3" out="runs/gpu-budget-$1-$2-$3" start end
  rm -rf "$out" "$out.log"
  mkdir -p runs
  echo
  echo "== $name: cnnlab train --recipe $1 --budget $2 --seed $3 --device $DEVICE $EXTRA"
  start=$(date +%s%N)
  # shellcheck disable=SC2086  # EXTRA holds several options
  "$PY" -m cnnlab train --recipe "$1" --budget "$2" --seed "$3" --device "$DEVICE" --no-progress \
    --data-dir "$DATA" --out "$out" $EXTRA | tee "$out.log"
  end=$(date +%s%N)
  "$PY" - "$name" "$out" "$start" "$end" <<'EOF' | tee -a runs/gpu-budgets.txt
import json, sys
name, run_dir, wall = sys.argv[1], sys.argv[2], (int(sys.argv[4]) - int(sys.argv[3])) / 1e9
epochs = sum(json.loads(line)["seconds"] for line in open(f"{run_dir}/metrics.jsonl"))
last = [line for line in open(f"{run_dir}.log") if line.startswith("test accuracy ")][-1].split("; files")[0]
print(f"{name}: {wall:.1f} s whole command, {epochs:.1f} s in the epochs (training and validation), "
      f"{wall - epochs:.1f} s outside them (start-up, data, planning, final test pass, exit); {last}")
EOF
}

# Most wanted first, so a run cut short by a time limit still has them.
rm -f runs/gpu-budgets.txt
for budget in ${BUDGETS-15s 30s}; do
  for recipe in ${BUDGET_RECIPES:-fast fast-long}; do
    for ((seed = 0; seed < ${BUDGET_SEEDS:-3}; seed++)); do budget_run "$recipe" "$budget" "$seed"; done
  done
done
if [ -f runs/gpu-budgets.txt ]; then
  echo
  echo "== the budgets, one line a run"
  cat runs/gpu-budgets.txt
fi
if [ "${MODELS:-1}" = 1 ]; then
  train resnet18 --model resnet18 --image-size 96 --epochs "$RESNET_EPOCHS"
  train vgg-small --model vgg-small --image-size 224 --epochs "$VGG_EPOCHS"
fi
if [ "${RECIPES:-1}" = 1 ]; then
  train fast --recipe fast
  train fast-long --recipe fast-long
fi
if [ "${ZOO:-1}" = 1 ]; then
  ZOO_MODELS=(alexnet nin googlenet densenet regnetx32 lenet-bn lenet-bn-scratch)
  if [ "${ZOO_PARALLEL:-1}" -le 1 ]; then
    zoo_stream "${ZOO_MODELS[@]}"
  else
    # ZOO_PARALLEL=k shares the GPU among k processes: these models are too small to fill an H200 alone, so
    # the zoo ends sooner, but each one's seconds per epoch are then those of a shared GPU (an upper bound).
    # Each stream's output goes to $ZOO_LOGS/zoo-<i>.log (default runs/), printed here when all are done.
    logs=${ZOO_LOGS:-runs}
    mkdir -p "$logs"
    echo
    echo "== the zoo in $ZOO_PARALLEL processes sharing the GPU; logs in $logs/zoo-*.log"
    pids=()
    for ((i = 0; i < ZOO_PARALLEL; i++)); do
      stream=()
      for ((j = i; j < ${#ZOO_MODELS[@]}; j += ZOO_PARALLEL)); do stream+=("${ZOO_MODELS[j]}"); done
      zoo_stream "${stream[@]}" >"$logs/zoo-$i.log" 2>&1 &
      pids+=($!)
    done
    status=0
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    for ((i = 0; i < ZOO_PARALLEL; i++)); do cat "$logs/zoo-$i.log"; done
    [ "$status" = 0 ] || { echo "gpu.sh: a zoo run failed (its log is above)" >&2; exit 1; }
  fi
fi
