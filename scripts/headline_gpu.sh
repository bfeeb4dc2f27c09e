#!/usr/bin/env bash
# usage: bash scripts/headline_gpu.sh [OUT_DIR] [extra train overrides...]
# README's headline and docs/detectors.md's V2 detector table in one go, all six runs side by side on one GPU machine
# (trainer=gpu; OMP_NUM_THREADS=2 each, so 12+ cores): V2 and V1, seeds 1, 2, 3, the default `cpu`
# profile (1,000 validation + 2,000 test images per set, S=20). The V2 runs also score every shipped
# detector and four corrupted FashionMNIST sets no default was chosen on (vertical flip, 90° rotation,
# Gaussian noise σ=0.1, contrast ×0.3); the V1 runs only IWAE and input complexity. Both skip the
# layer-2-4 mixtures (fe.extra_layers=[]), which no column here reads.
# On a CPU machine, TRAINER=cpu runs the same (hours on 2 cores; one run at a time: JOBS=1).
set -uo pipefail
out=${1:-outputs/headline}
shift || true
trainer=${TRAINER:-gpu}
limit=${LIMIT_S:-0}  # seconds each run may take (0: no limit)
split='eval_split: {val: 1000, test: 2000}'
corrupted=(
  "+data.ood_sets.fmnist_vflip={source: in_distribution, corruptions: [vflip], $split}"
  "+data.ood_sets.fmnist_rot90={source: in_distribution, corruptions: [{name: rotate, degrees: 90}], $split}"
  "+data.ood_sets.fmnist_noise={source: in_distribution, corruptions: [{name: gaussian_noise, sigma: 0.1}], $split}"
  "+data.ood_sets.fmnist_contrast={source: in_distribution, corruptions: [{name: contrast, factor: 0.3}], $split}"
)
mkdir -p "$out"
run() {  # run NAME overrides...: one training run into $out/NAME, its log beside it
  local name=$1
  shift
  local wrap=()
  [ "$limit" = 0 ] || wrap=(timeout "$limit")
  OMP_NUM_THREADS=2 "${wrap[@]}" python -m fevae.train "$@" trainer="$trainer" fe.extra_layers=[] \
    trainer.enable_progress_bar=false hydra.run.dir="$out/$name" "${EXTRA[@]}" > "$out/$name.log" 2>&1
  echo "$name: exit $?"
}
EXTRA=("$@")
for seed in 1 2 3; do
  run "v2_$seed" +experiment=v2_gaussian seed=$seed \
    'eval.detectors=[iwae,input_complexity,likelihood_regret,likelihood_ratio,standardised_fevae,dose]' "${corrupted[@]}" &
  [ "${JOBS:-6}" = 1 ] && wait
  run "v1_$seed" +experiment=v1_bernoulli seed=$seed 'eval.detectors=[iwae,input_complexity]' &
  [ "${JOBS:-6}" = 1 ] && wait
done
wait
