#!/usr/bin/env bash
# The accuracy-vs-MACs protocol of benchmarks/pareto.py at a GPU budget: ResNet-56 on Fashion-MNIST,
# 30 epochs of the full train split, seeds 0-2, every method, on one GPU.
#
#   bash scripts/gpu_pareto.sh                 # writes benchmarks/results/pareto_resnet56_gpu.{md,json,png,runs.jsonl}
#
# Every (seed, method, setting) is its own process and all of them run at once, in two waves: first
# everything that needs no other run, then the Torch-Pruning baselines, which prune to the MACs that
# the same seed's SSS point reached. Small networks leave a big GPU mostly idle, so running them side
# by side is what fits the protocol in minutes. Finished runs are lines of the .runs.jsonl log and are
# not repeated, so a second call finishes what a first one left. The dataset travels as files: the
# raw Fashion-MNIST files in data/FashionMNIST/raw (unpacked there from Debian's dataset-fashion-mnist
# by any earlier run) are all it reads. Every setting can be overridden from the environment, e.g. a
# CPU smoke test: ARCH=resnet20 DATASET=synthetic EPOCHS=2 BATCHES=3 SEEDS=0 bash scripts/gpu_pareto.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=offline

ARCH=${ARCH:-resnet56}
DATASET=${DATASET:-fashion_mnist}
EPOCHS=${EPOCHS:-30}
FINETUNE=${FINETUNE:-8}
BATCHES=${BATCHES:-469}
SEEDS=${SEEDS:-"0 1 2"}
GAMMAS=${GAMMAS:-"0.006 0.012"}
BUDGETS=${BUDGETS:-"0.4"}
WIDTHS=${WIDTHS:-"13 10 7"}
OUT=${OUT:-benchmarks/results/pareto_${ARCH}_gpu}
LOGS=${LOGS:-runs/gpu_pareto}

if [ "$DATASET" = fashion_mnist ] && [ ! -f data/FashionMNIST/raw/train-images-idx3-ubyte ] \
   && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "gpu_pareto: no Fashion-MNIST files in data/FashionMNIST/raw or /usr/share/datasets/fashion-mnist;" \
       "run any Fashion-MNIST job once on a machine that has them and carry data/ along" >&2
  exit 2
fi
mkdir -p "$LOGS"
list() { local IFS=,; echo "[$*]"; }
common=(--arch "$ARCH" --dataset "$DATASET" --epochs "$EPOCHS" --finetune_epochs "$FINETUNE"
        --batches_per_epoch "$BATCHES" --out "$OUT" --gammas "$(list $GAMMAS)" --budgets "$(list $BUDGETS)"
        --widths "$(list $WIDTHS)")
pids=()
run() {  # one process per run; its output in $LOGS/<name>.log
  local name=$1; shift
  OMP_NUM_THREADS=1 python -m benchmarks.pareto "${common[@]}" "$@" >"$LOGS/$name.log" 2>&1 &
  pids+=($!)
}
wait_all() {
  local failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
  pids=()
  if [ "$failed" -gt 0 ]; then echo "gpu_pareto: $failed run(s) failed, see $LOGS/*.log" >&2; exit 1; fi
}

for s in $SEEDS; do
  run "unpruned-$s" --seeds "[$s]" --methods "[unpruned]"
  for g in $GAMMAS; do run "sss-$g-$s" --seeds "[$s]" --methods "[sss]" --gammas "[$g]"; done
  for b in $BUDGETS; do run "budget-$b-$s" --seeds "[$s]" --methods "[sss_budget_landing]" --budgets "[$b]"; done
  for w in $WIDTHS; do run "uniform-$w-$s" --seeds "[$s]" --methods "[uniform]" --widths "[$w]"; done
done
wait_all
for s in $SEEDS; do
  for m in slimming depgraph; do
    for g in $GAMMAS; do run "$m-$g-$s" --seeds "[$s]" --methods "[$m]" --gammas "[$g]" --match "[sss:$g]"; done
    for b in $BUDGETS; do
      run "$m-budget-$b-$s" --seeds "[$s]" --methods "[$m]" --budgets "[$b]" --match "[sss_budget_landing:$b]"
    done
  done
done
wait_all
python -m benchmarks.pareto "${common[@]}" --seeds "$(list $SEEDS)" --report_only true
