#!/usr/bin/env bash
# The image-level head on real data: both models at 128 px for 6 epochs from scratch on the shared
# Train split (all three classes), threshold calibrated on Val (covfast calibrate's default target),
# scored on Test; two seeds each. Prints a table. (The recipe before the head, the pixel-evidence gate, and
# its runs in docs/results.md were made by covfast before the gate was retired from training.)
# ABLATIONS=1 adds, for the Attention U-Net (seed 42), one run per part of the recipe left out: the
# head trained on two classes (no Normal images), and a heavier head loss (--cls-weight 3). CLS_WEIGHT= sets
# the head's weight of the main runs (default 0.3, covfast's; the first measured runs used 1).
# Usage: bash benchmarks/image_head.sh [DATA_ROOT] ; ARCHS=, SEEDS=, ABLATIONS=1 override.
# The same protocol at the study's budget on a GPU: SIZE=256 EPOCHS=30 BS=16 DEVICE=cuda (defaults: the
# CPU budget, 128 px, 6 epochs, bs 8, covfast's own device choice).
# About 1.5 hours on 2 CPU cores with bf16 (the ResNet34 runs are most of it); in the background:
#   nohup bash benchmarks/image_head.sh ../shared/data/covid-qu-ex > image_head.log 2>&1 &
set -euo pipefail
data=${1:-../shared/data/covid-qu-ex}
stamp=$(date +%Y%m%d-%H%M%S)
runs=()
train() {  # NAME ARCH ARGS...
  local name=$1 arch=$2; shift 2
  local start=$(date +%s)
  covfast train "$arch" --data "$data" --size "${SIZE:-128}" --epochs "${EPOCHS:-6}" --bs "${BS:-8}" \
    ${DEVICE:+--device "$DEVICE"} --no-pretrained --name "$name" "$@"
  echo "== $name: training wall $(($(date +%s) - start)) s on $(nproc) CPU cores"
}
recipe() {  # ARCH -> its training options (the best of the 6-epoch sweeps before the head)
  case $1 in attention-unet) echo "--lr 2e-3 --dice-weight 4" ;; *) echo "--lr 1e-3 --dice-weight 4 --no-augment" ;; esac
}
for arch in ${ARCHS:-attention-unet resnet34}; do
  for seed in ${SEEDS:-42 1}; do
    name="head-$arch-s$seed-$stamp"
    train "$name" "$arch" $(recipe "$arch") --seed "$seed" --classes all --cls-weight "${CLS_WEIGHT:-0.3}"
    covfast calibrate "$name"            # on Val, at covfast's default target
    covfast evaluate "$name" --split Test > /dev/null
    runs+=("$name")
  done
done
if [ "${ABLATIONS:-0}" = 1 ]; then
  arch=attention-unet
  name="ablate-2class-$stamp"
  train "$name" $arch $(recipe $arch) --seed 42 --classes COVID-19,Non-COVID --cls-weight "${CLS_WEIGHT:-0.3}"
  covfast calibrate "$name" && covfast evaluate "$name" --split Test --classes all > /dev/null
  runs+=("$name")
  name="ablate-cls3-$stamp"
  train "$name" $arch $(recipe $arch) --seed 42 --classes all --cls-weight 3
  covfast calibrate "$name" && covfast evaluate "$name" --split Test > /dev/null
  runs+=("$name")
fi
python - "${runs[@]}" <<'PY'
import json, sys
print("| run | Test COVID-19 Dice [95% CI] | Non-COVID left empty | Normal left empty | AUC COVID-19 vs rest | AUC vs Non-COVID | threshold (split) |")
print("|---|---|---|---|---|---|---|")
for name in sys.argv[1:]:
    s = json.load(open(f"runs/{name}/eval/Test/summary.json"))
    g = {r["group"]: r for r in s["groups"]}
    cal = json.load(open(f"runs/{name}/calibration.json"))
    fmt = lambda v: "–" if v is None or v != v else f"{v:.4f}"
    normal = g.get("Normal", {}).get("specificity")
    print(f"| {name} | {g['COVID-19']['dice']:.4f} [{g['COVID-19']['dice_ci_low']:.3f}, {g['COVID-19']['dice_ci_high']:.3f}] "
          f"| {fmt(g['Non-COVID']['specificity'])} | {fmt(normal)} | {fmt(g['All'].get('auc'))} | "
          f"{fmt(g['Non-COVID'].get('auc'))} | {cal.get('threshold', cal.get('gate_margin')):.4g} ({cal['split']}) |")
PY
