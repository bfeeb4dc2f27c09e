#!/usr/bin/env bash
# Re-decide the V2 defaults on validation (issue #11): every alternative on the same three seeds as
# the headline (outputs/seeds_v2, made by the command in docs/results.md "Headline"), one change at a time.
#   mixture-only changes (reg_covar, fe.layer, pre-activation): `fevae.evaluate` on the seed runs,
#     reusing their trained models;
#   training changes (Jigsaw epochs, VAE batch size): a 3-seed sweep that retrains only the model
#     that changed (the other comes from the model cache).
# Every run writes validation (ood_val) and test (ood) AUROCs; scripts/defaults_table.py tabulates them.
#
# Decision rule, fixed before any of these runs existed (2026-11-26 11:20 UTC):
#   selection metric = validation AUROC of APO log p_FEVAE on MNIST (optimized_metric's default),
#   mean over seeds 1-3. An alternative replaces today's default only if its mean beats the
#   default's by more than the larger of the two seed sds AND its salt-and-pepper-MNIST validation
#   AUROC (same score) does not drop by more than that margin. Test parts are reported, never read
#   by the rule; PR is reported next to it (the defaults are an APO choice).
# Usage: scripts/redecide_defaults_v2.sh [OUT=outputs/defaults_v2] [SEEDS=outputs/seeds_v2]
set -euo pipefail
OUT=${OUT:-outputs/defaults_v2}
SEEDS=${SEEDS:-outputs/seeds_v2}
CACHE=${CACHE:-outputs/cache_seeds}
LEAN=(eval.detectors=[iwae,input_complexity] "paths.cache_dir=$CACHE" trainer.enable_progress_bar=false)
mkdir -p "$OUT/logs"

evaluate() {  # evaluate <name> <seed> <overrides...>
  local name=$1 seed=$2; shift 2
  local dir="$OUT/${name}_s${seed}"
  [ -f "$dir/metrics.json" ] && { echo "have $dir"; return; }
  echo "$(date -u +%T) evaluate $name seed $seed"
  python -m fevae.evaluate "run_dir=$SEEDS/$((seed - 1))" cache.enabled=true "${LEAN[@]}" "$@" "hydra.run.dir=$dir" >"$OUT/logs/${name}_s${seed}.log" 2>&1
}
sweep() {  # sweep <name> <overrides...>
  local name=$1; shift
  [ -f "$OUT/$name/summary_seeds.csv" ] && { echo "have $OUT/$name"; return; }
  echo "$(date -u +%T) sweep $name"
  python -m fevae.train -m +experiment=v2_gaussian seed=1,2,3 "${LEAN[@]}" fe.extra_layers=[] "$@" \
    "hydra.sweep.dir=$OUT/$name" >"$OUT/logs/$name.log" 2>&1
}

# reg_covar 1e-6 is fe=literal (the paper's sklearn default)
for s in 1 2 3; do evaluate reg_covar_1e-6 $s fe.reg_covar=1e-6 fe.extra_layers=[]; done
for s in 1 2 3; do evaluate reg_covar_1e-2 $s fe.reg_covar=1e-2 fe.extra_layers=[]; done
for s in 1 2 3; do evaluate layers $s fe.extra_layers=[2,3,4]; done   # fe.layer 2, 3, 4 next to 1
sweep jigsaw30 budget.jigsaw.trainer.max_epochs=30
for s in 1 2 3; do evaluate preact $s fe.pre_activation=true fe.extra_layers=[]; done
sweep vae_batch512 budget.vae.batch_size=512
echo "$(date -u +%T) done"
