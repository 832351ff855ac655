#!/usr/bin/env bash
# Fresh machine to submission on synthetic data: set up .venv, synthesize a Kaggle-layout
# dataset, train, evaluate on held-out subjects, tune post-processing, predict the test images,
# check the submission.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
DATA=${DATA:-runs/quickstart/data}
WORKDIR=${WORKDIR:-runs/quickstart/work}
TFDS=${TFDS:-runs/quickstart/tfds}  # Not ~/tensorflow_datasets, the default: that is for the real data.
NJ=.venv/bin/nerve-jax

if [ ! -f "$DATA/train_masks.csv" ]; then
  $NJ synth --out "$DATA" --subjects 24 --frames 20 --test 60 --seed 0
fi
$NJ train --config configs/quickstart.py --workdir "$WORKDIR" --config.kaggle_dir="$DATA" \
    --config.tfds_data_dir="$TFDS"
$NJ evaluate --workdir "$WORKDIR"
# Post-processing tuned on the held-out predictions train wrote (benchmarks/quality.py: it helps);
# after evaluate, so the validation Dice printed above is not scored on the frames it was tuned on.
$NJ tune --workdir "$WORKDIR"
$NJ predict --workdir "$WORKDIR" --out "$WORKDIR/submission.csv"
echo "checkpoints: $WORKDIR/checkpoints"
