#!/usr/bin/env bash
# usage: bash scripts/rescore_detectors.sh RUN_DIR OUT_DIR [more evaluate overrides...]
# Re-score a finished run with every shipped detector (conf/detector/) into OUT_DIR; a run made before the
# likelihood ratio existed gets its background VAE trained there. eval.channels_last=false: the plain
# decoder, as docs/detectors.md's detector tables were made (the channels-last default gives the same AUROCs to
# 6 decimals on the sample README checks).
set -euo pipefail
run=$1 out=$2
shift 2
python -m fevae.evaluate run_dir="$run" hydra.run.dir="$out" \
  'eval.detectors=[iwae,input_complexity,likelihood_regret,likelihood_ratio,standardised_fevae,dose]' \
  eval.channels_last=false trainer.enable_progress_bar=false "$@"
