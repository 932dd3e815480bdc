#!/usr/bin/env bash
# Real-data training benchmark: both models at 128 px for 6 epochs from scratch on COVID-QU-Ex
# (Train -> Val, COVID-19 + Non-COVID), with wall time and the last history row of each.
# Usage: bash benchmarks/real_train.sh [DATA_ROOT] [EXTRA covfast train OPTIONS...]
# Takes about an hour on 2 CPU cores; run it in the background:
#   nohup bash benchmarks/real_train.sh ../shared/data/covid-qu-ex > real_train.log 2>&1 &
set -euo pipefail
data=${1:-../shared/data/covid-qu-ex}
shift || true
stamp=$(date +%Y%m%d-%H%M%S)
# Batch size and peak learning rates; override with BS=, LR_ATTENTION=, LR_RESNET=, ARCHS=.
# Tried: BS=4 (twice the optimizer steps in the same 6 epochs) gave the Attention U-Net a lower
# valid COVID Dice (0.6782 vs 0.6826) and Non-COVID Dice (0.2275 vs 0.3090) than bs 8;
# LR_ATTENTION=5e-3 gave 0.6646 and 0.1674.
# AUGMENT=0 trains without augmentation: better on the GPU sweep (README "What helps at 6 epochs"),
# worse in one CPU run (attention-unet 0.6744 / 0.2661 against 0.6826 / 0.3090), so within the spread.
# Passing --dice-weight 4 raised the valid COVID Dice of both models (attention-unet 0.7018, resnet34
# 0.6798) and lowered Non-COVID Dice (0.0815, 0.3090): docs/results.md "Weighting the Dice term".
# AUGMENT=0 ARCHS=resnet34 ... --dice-weight 4 beat the two plain baselines (smp Unet-ResNet34, fastai unet_learner) on Val (COVID Dice 0.6946,
# 35.2% of Non-COVID left empty; 3833 s); with --seed 1 it did not (model.pth = epoch 5: 0.6810, 39.9%; 3765 s).
# LR_ATTENTION=2e-3 ARCHS=attention-unet ... --dice-weight 4, then covfast calibrate RUN --specificity 0.3:
# COVID Dice 0.6969, 27.04% of Non-COVID left empty (63 of 233; 670 s); with --seed 1: 0.7091, 27.04% (644 s).
bs=${BS:-8}
aug=$([ "${AUGMENT:-1}" = 1 ] && echo --augment || echo --no-augment)
for arch in ${ARCHS:-attention-unet resnet34}; do
  case $arch in attention-unet) lr=${LR_ATTENTION:-3e-3} ;; *) lr=${LR_RESNET:-1e-3} ;; esac
  start=$(date +%s)
  covfast train "$arch" --data "$data" --size 128 --epochs 6 --bs $bs --lr $lr --no-pretrained $aug --name "real128-$arch-$stamp" "$@"
  end=$(date +%s)
  echo "== $arch: wall $((end - start)) s on $(nproc) CPU cores; last history row:"
  tail -n 2 "runs/real128-$arch-$stamp/history.csv"
done
