#!/usr/bin/env bash
# Re-score the three headline V2 runs (outputs/seeds_v2/{0,1,2}: +experiment=v2_gaussian seed=1,2,3) with
# every shipped detector, on the shipped OOD sets (MNIST, salt-and-pepper MNIST) and four corrupted
# FashionMNIST sets no default was chosen on (vertical flip, 90° rotation, Gaussian noise σ=0.1,
# contrast ×0.3; each 1,000 validation / 2,000 test images). The likelihood ratio's background VAE is
# trained here (the runs predate it), into each output folder. Output: outputs/detectors_v2/<k>/.
# eval.channels_last=false: the README table was made with the plain decoder (before the channels-last
# default existed); the default gives the same AUROCs to 6 decimals on the sample checked in README.
set -euo pipefail
split='eval_split: {val: 1000, test: 2000}'
out=${OUT:-outputs}
for k in "${@:-0 1 2}"; do
  python -m fevae.evaluate run_dir=$out/seeds_v2/$k hydra.run.dir=$out/detectors_v2/$k \
    'eval.detectors=[iwae,input_complexity,likelihood_regret,likelihood_ratio,standardised_fevae,dose]' \
    "+data.ood_sets.fmnist_vflip={source: in_distribution, corruptions: [vflip], $split}" \
    "+data.ood_sets.fmnist_rot90={source: in_distribution, corruptions: [{name: rotate, degrees: 90}], $split}" \
    "+data.ood_sets.fmnist_noise={source: in_distribution, corruptions: [{name: gaussian_noise, sigma: 0.1}], $split}" \
    "+data.ood_sets.fmnist_contrast={source: in_distribution, corruptions: [{name: contrast, factor: 0.3}], $split}" \
    eval.channels_last=false trainer.enable_progress_bar=false
done
