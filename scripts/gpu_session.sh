#!/usr/bin/env bash
# usage (on a lent GPU machine, from the repo root, the data in $FEVAE_DATA_DIR): bash scripts/gpu_session.sh OUT LIMIT_S
# The V1 headline's three seeds (trainer=gpu, IWAE and input complexity, layer-1 mixture only) and one default
# V2 run (trainer=gpu, every default detector and mixture, the three models side by side on the one GPU) at once,
# each under `timeout LIMIT_S`; the run folders (without checkpoints and TensorBoard files) packed into OUT/runs.tgz.
set -uo pipefail
out=${1:?OUT}
limit=${2:-540}
work=gpu_runs
mkdir -p "$work"
run() {  # run NAME overrides...
  local name=$1
  shift
  OMP_NUM_THREADS=4 timeout "$limit" python -m fevae.train "$@" trainer=gpu trainer.enable_progress_bar=false \
    hydra.run.dir="$work/$name" > "$work/$name.log" 2>&1
  echo "$name: exit $?" | tee -a "$work/exits.txt"
}
for seed in 1 2 3; do
  run "v1_$seed" +experiment=v1_bernoulli seed=$seed 'eval.detectors=[iwae,input_complexity]' 'fe.extra_layers=[]' &
done
run v2_default +experiment=v2_gaussian training.side_by_side=true &
wait
tar czf "$out/runs.tgz" --exclude='*.ckpt' --exclude='tensorboard' --exclude='*.png' --exclude='*.pdf' "$work"
