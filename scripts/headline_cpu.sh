#!/usr/bin/env bash
# usage: bash scripts/headline_cpu.sh [v2|v1|mnist] [OUT]   (default: v2 and v1, outputs/)
# README's headline tables and the V2 detector table of docs/detectors.md, made on this machine (2-core CPU, the `cpu` profile: 1,000
# validation + 2,000 test images per set, S=20), seeds 1, 2, 3 as one Hydra multirun per experiment (one job after
# another, each training its models side by side; models cached in OUT/cache_seeds):
#  - v2: every shipped detector, on MNIST, salt-and-pepper MNIST, four corrupted FashionMNIST sets no default
#    was chosen on (vertical flip, 90° rotation, Gaussian noise σ=0.1, contrast ×0.3) and the near-OOD sets of the
#    literature (horizontal flip, inverted images, constant images, uniform noise) -> OUT/seeds_v2/{0,1,2}
#  - v1: the same, on the same ten sets (until 2026-12-07: MNIST and salt-and-pepper MNIST only) -> OUT/seeds_v1/{0,1,2}
#  - v2 and v1 also score the four held-out sets of scripts/holdout_sets.py (built into OUT/holdout)
#  - mnist (only when named): the reversed direction of docs/detectors.md, V2 with every detector on MNIST's 10,000
#    test digits as your own data (data=npz: 3,000 held out for evaluation, 1,000 validation, 6,000 train; fe.n=5000),
#    FashionMNIST and salt-and-pepper FashionMNIST as OOD -> OUT/seeds_mnist/{0,1,2}; needs FEVAE_DATA_DIR. The 3,000
#    held-out digits are exactly 1,000 validation + 2,000 test, so the validation pool must be a third of them.
# Both skip the layer-2-4 mixtures (fe.extra_layers=[]), which no column of these tables reads. Likelihood regret
# scores a random 100 of each part's images (eval.regret.subset=100, the same images for every seed; 300 would
# add ~20 min per run here); its AUROC intervals are correspondingly wider.
# Tables: python scripts/headline_table.py OUT/seeds_v2/{0,1,2}; python scripts/detector_table.py OUT/seeds_v2/{0,1,2};
# python -m fevae.recommend OUT/seeds_v2/{0,1,2} --out OUT/seeds_v2/recommend.json
set -euo pipefail
which=${1:-both}
out=${2:-outputs}
split='eval_split: {val: 1000, test: 2000}'
# The four held-out sets of scripts/holdout_sets.py (registered before any score on them: docs/results.md#held-out-ood-sets),
# added to the v2 and v1 runs; their validation parts (297 images) are read by nothing.
holdout=()
if [ "$which" != mnist ]; then
  python scripts/holdout_sets.py "$out/holdout"
  for set in sklearn_digits glyphs shapes photo_patches; do
    holdout+=("+data.ood_sets.$set={path: $(cd "$out/holdout" && pwd)/$set.npy, eval_split: {val: 297, test: 1500}}")
  done
fi
# The eight corrupted and near-OOD FashionMNIST sets (built from the in-distribution test pool), scored by v2 and v1
corrupted=(
  "+data.ood_sets.fmnist_vflip={source: in_distribution, corruptions: [vflip], $split}"
  "+data.ood_sets.fmnist_rot90={source: in_distribution, corruptions: [{name: rotate, degrees: 90}], $split}"
  "+data.ood_sets.fmnist_noise={source: in_distribution, corruptions: [{name: gaussian_noise, sigma: 0.1}], $split}"
  "+data.ood_sets.fmnist_contrast={source: in_distribution, corruptions: [{name: contrast, factor: 0.3}], $split}"
  "+data.ood_sets.fmnist_hflip={source: in_distribution, corruptions: [hflip], $split}"
  "+data.ood_sets.fmnist_invert={source: in_distribution, corruptions: [invert], $split}"
  "+data.ood_sets.constant={source: in_distribution, corruptions: [constant], $split}"
  "+data.ood_sets.uniform_noise={source: in_distribution, corruptions: [uniform_noise], $split}"
)
if [ "$which" = v2 ] || [ "$which" = both ]; then
  python -m fevae.train -m +experiment=v2_gaussian seed=1,2,3 'fe.extra_layers=[]' eval.regret.subset=100 trainer.enable_progress_bar=false \
    "${corrupted[@]}" "${holdout[@]}" paths.cache_dir="$out/cache_seeds" hydra.sweep.dir="$out/seeds_v2"
fi
if [ "$which" = v1 ] || [ "$which" = both ]; then
  python -m fevae.train -m +experiment=v1_bernoulli seed=1,2,3 'fe.extra_layers=[]' eval.regret.subset=100 \
    trainer.enable_progress_bar=false "${corrupted[@]}" "${holdout[@]}" paths.cache_dir="$out/cache_seeds" hydra.sweep.dir="$out/seeds_v1"
fi
if [ "$which" = mnist ]; then
  mkdir -p "$out"
  python -c "import sys, numpy as np; from fevae.data.idx import read_idx; d = sys.argv[1] + '/mnist/'; np.savez(sys.argv[2], images=read_idx(d + 't10k-images-idx3-ubyte.gz'), labels=read_idx(d + 't10k-labels-idx1-ubyte.gz').astype(np.int64))" \
    "${FEVAE_DATA_DIR:?set FEVAE_DATA_DIR to the folder holding mnist/t10k-images-idx3-ubyte.gz}" "$out/mnist_test.npz"
  python -m fevae.train -m +experiment=v2_gaussian seed=1,2,3 data=npz data.path="$(cd "$out" && pwd)/mnist_test.npz" data.name=mnist \
    data.test_size=3000 data.eval_split.val_pool=0.3333333333333333 fe.n=5000 'fe.extra_layers=[]' eval.regret.subset=100 trainer.enable_progress_bar=false \
    +data.ood_sets.fashionmnist.source=fashionmnist \
    '+data.ood_sets.fashionmnist_saltpepper={source: fashionmnist, corruptions: [{name: salt_and_pepper, p: 0.2}]}' \
    paths.cache_dir="$out/cache_seeds" hydra.sweep.dir="$out/seeds_mnist"
fi
