#!/usr/bin/env bash
# The lung output on real data: both models at 128 px for 6 epochs from scratch on the shared Train split (all
# three classes; Attention U-Net lr 2e-3 --dice-weight 4, ResNet34 U-Net lr 1e-3 --dice-weight 4 --no-augment),
# two seeds, with the lung output (--lung-weight 1, the default) and without it (--lung-weight 0, the runs to
# compare with). Each run: threshold calibrated on Val (covfast calibrate's default target), scored on Test; then,
# for the runs with lungs, the infection kept inside the predicted lungs against anywhere, on Val (where the
# default is chosen) and on Test; and the segmentation with no decision (benchmarks/segmentation_ceiling.py).
# Prints one table. TRAIN=0 scores runs already trained under $COVFAST_RUNS_DIR (names as below).
# Usage: bash benchmarks/lungs.sh [DATA_ROOT]; ARCHS=, SEEDS= and KINDS= (lung, base) override. Several hours on 2 CPU cores (ResNet34
# most of it); run it in the background: nohup bash benchmarks/lungs.sh ../shared/data/covid-qu-ex > lungs.log 2>&1 &
set -euo pipefail
data=${1:-../shared/data/covid-qu-ex}
runs_dir=${COVFAST_RUNS_DIR:-runs}
names=()
recipe() {  # ARCH -> its training options (the 6-epoch recipe of docs/results.md)
  case $1 in attention-unet) echo "--lr 2e-3 --dice-weight 4" ;; *) echo "--lr 1e-3 --dice-weight 4 --no-augment" ;; esac
}
short() { case $1 in attention-unet) echo aunet ;; *) echo r34 ;; esac; }
for arch in ${ARCHS:-attention-unet resnet34}; do
  for seed in ${SEEDS:-42 1}; do
    for kind in ${KINDS:-lung base}; do
      name="$kind-$(short "$arch")-s$seed"
      weight=$([ "$kind" = lung ] && echo 1 || echo 0)
      if [ "${TRAIN:-1}" = 1 ] && [ ! -f "$runs_dir/$name/model.pth" ]; then
        covfast train "$arch" --data "$data" --size 128 --epochs 6 --bs 8 --no-pretrained --classes all \
          --seed "$seed" --lung-weight "$weight" --name "$name" $(recipe "$arch")
      fi
      grep -q '"status": "complete"' "$runs_dir/$name/config.json" 2>/dev/null || continue  # not (yet) trained
      [ -f "$runs_dir/$name/bench/ceiling.txt" ] && [ "${AGAIN:-0}" = 0 ] && { names+=("$name"); continue; }  # scored before
      names+=("$name")
      out="$runs_dir/$name/bench"
      mkdir -p "$out"
      if [ "$kind" = lung ]; then  # both decisions, the same Val threshold: Val chooses, Test reports
        for where in anywhere inside-lungs; do
          covfast calibrate "$name" --data "$data" --force --"$where" > /dev/null
          covfast evaluate "$name" --data "$data" --split Val --allow-calibration-split > /dev/null
          cp "$runs_dir/$name/eval/Val/summary.json" "$out/Val-$where.json"
          covfast evaluate "$name" --data "$data" --split Test > /dev/null
          cp "$runs_dir/$name/eval/Test/summary.json" "$out/Test-$where.json"
        done
      else
        covfast calibrate "$name" --data "$data" --force > /dev/null
        covfast evaluate "$name" --data "$data" --split Test > /dev/null
        cp "$runs_dir/$name/eval/Test/summary.json" "$out/Test.json"
      fi
      python benchmarks/segmentation_ceiling.py "$runs_dir/$name" --split Test --data "$data" --out "$out" > "$out/ceiling.txt"
    done
  done
done
python - "$runs_dir" "${names[@]}" <<'PY'
import json, sys
import pandas as pd
runs_dir, names = sys.argv[1], sys.argv[2:]
cut = lambda v: "–" if v is None or v != v else f"{int(v * 10000) / 10000:.4f}"  # cut, not rounded
print("| run | split, decision | COVID-19 Dice | Non-COVID left empty | Normal left empty | lung Dice (All) | severity MAE, true / own lungs | band agreement, true / own lungs | no-decision ceiling |")
print("|---|---|---|---|---|---|---|---|---|")
for name in names:
    bench = f"{runs_dir}/{name}/bench"
    ceiling = pd.read_csv(f"{bench}/segmentation_ceiling.csv")["dice_pixel_0.5"].mean()
    files = ["Val-anywhere", "Val-inside-lungs", "Test-anywhere", "Test-inside-lungs"] if name.startswith("lung") else ["Test"]
    for f in files:
        g = {r["group"]: r for r in json.load(open(f"{bench}/{f}.json"))["groups"]}
        a = g["All"]
        print(f"| {name} | {f} | {cut(g['COVID-19']['dice'])} | {cut(g['Non-COVID']['specificity'])} | "
              f"{cut(g['Normal']['specificity'])} | {cut(a.get('lung_dice'))} | {cut(a['severity_mae'])} / "
              f"{cut(a.get('severity_mae_pred_lung'))} | {cut(a['severity_band_agreement'])} / "
              f"{cut(a.get('severity_band_agreement_pred_lung'))} | {cut(ceiling) if f.startswith('Test') else ''} |")
PY
