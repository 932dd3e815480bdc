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
# bs 4 gives twice the optimizer steps in the same 6 epochs, and on 2 CPU cores the ResNet34
# DynamicUnet step runs faster per image at bs 4 (1.33 img/s) than at bs 8 (1.15 img/s).
bs=${BS:-4}
for arch in ${ARCHS:-attention-unet resnet34}; do
  case $arch in attention-unet) lr=${LR_ATTENTION:-3e-3} ;; *) lr=${LR_RESNET:-2e-3} ;; esac
  start=$(date +%s)
  covfast train "$arch" --data "$data" --size 128 --epochs 6 --bs $bs --lr $lr --no-pretrained --name "real128-$arch-$stamp" "$@"
  end=$(date +%s)
  echo "== $arch: wall $((end - start)) s on $(nproc) CPU cores; last history row:"
  tail -n 2 "runs/real128-$arch-$stamp/history.csv"
done
