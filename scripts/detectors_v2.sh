#!/usr/bin/env bash
# usage: bash scripts/detectors_v2.sh [k ...]   (default 0 1 2)
# Re-score the three headline V2 runs (outputs/seeds_v2/<k>: +experiment=v2_gaussian seed=1,2,3) with every
# shipped detector (scripts/rescore_detectors.sh) on the shipped OOD sets (MNIST, salt-and-pepper MNIST) and
# four corrupted FashionMNIST sets no default was chosen on (vertical flip, 90° rotation, Gaussian noise
# σ=0.1, contrast ×0.3; each 1,000 validation / 2,000 test images). Output: outputs/detectors_v2/<k>/.
set -euo pipefail
out=${OUT:-outputs}
split='eval_split: {val: 1000, test: 2000}'
[ $# -gt 0 ] || set -- 0 1 2
for k in "$@"; do
  bash "$(dirname "$0")/rescore_detectors.sh" "$out/seeds_v2/$k" "$out/detectors_v2/$k" \
    "+data.ood_sets.fmnist_vflip={source: in_distribution, corruptions: [vflip], $split}" \
    "+data.ood_sets.fmnist_rot90={source: in_distribution, corruptions: [{name: rotate, degrees: 90}], $split}" \
    "+data.ood_sets.fmnist_noise={source: in_distribution, corruptions: [{name: gaussian_noise, sigma: 0.1}], $split}" \
    "+data.ood_sets.fmnist_contrast={source: in_distribution, corruptions: [{name: contrast, factor: 0.3}], $split}"
done
