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
# peak learning rates: 3e-3 for the Attention U-Net (tried at 64 px), fastai's default 1e-3 for DynamicUnet
for arch in attention-unet resnet34; do
  case $arch in attention-unet) lr=3e-3 ;; *) lr=1e-3 ;; esac
  start=$(date +%s)
  covfast train "$arch" --data "$data" --size 128 --epochs 6 --bs 8 --lr $lr --no-pretrained --name "real128-$arch-$stamp" "$@"
  end=$(date +%s)
  echo "== $arch: wall $((end - start)) s on $(nproc) CPU cores; last history row:"
  tail -n 2 "runs/real128-$arch-$stamp/history.csv"
done
