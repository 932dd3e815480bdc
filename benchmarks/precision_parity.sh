#!/usr/bin/env bash
# Does bf16 training cost accuracy? The Attention U-Net at 128 px for 6 epochs on the real Train split,
# in fp32 and in bf16 (autocast + channels_last), two seeds each; every run scored on Val and Test in
# the precision it trained in. Prints wall times and a table; results go to runs/parity-*.
# Usage: bash benchmarks/precision_parity.sh [DATA_ROOT] [EXTRA covfast train OPTIONS...]
# About 45 minutes on 2 CPU cores (fp32 runs ~11 min, bf16 ~4 min, scoring ~2 min a run); in the background:
#   nohup bash benchmarks/precision_parity.sh ../shared/data/covid-qu-ex > parity.log 2>&1 &
set -euo pipefail
data=${1:-../shared/data/covid-qu-ex}
shift || true
stamp=$(date +%Y%m%d-%H%M%S)
runs=()
for seed in ${SEEDS:-42 1}; do
  for precision in fp32 bf16; do
    name="parity-$precision-s$seed-$stamp"
    start=$(date +%s)
    covfast train attention-unet --data "$data" --size 128 --epochs 6 --bs 8 --lr ${LR:-2e-3} --dice-weight 4 \
      --no-pretrained --seed "$seed" --precision "$precision" --name "$name" "$@"
    echo "== $name: training wall $(($(date +%s) - start)) s on $(nproc) CPU cores"
    for split in Val Test; do
      start=$(date +%s)
      covfast evaluate "$name" --split $split --precision "$precision" > /dev/null
      echo "== $name: $split scored in $(($(date +%s) - start)) s"
    done
    runs+=("$name")
  done
done
python - "${runs[@]}" <<'PY'
import json, sys
rows = []
for name in sys.argv[1:]:
    for split in ("Val", "Test"):
        s = {g["group"]: g for g in json.load(open(f"runs/{name}/eval/{split}/summary.json"))["groups"]}
        rows.append((name, split, s["COVID-19"]["dice"], s["COVID-19"]["dice_pooled"], s["Non-COVID"]["specificity"],
                     s["All"]["dice"]))
print("| run | split | COVID-19 Dice | COVID-19 pooled Dice | Non-COVID left empty | mean Dice |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]:.4f} | {r[3]:.4f} | {r[4]:.4f} | {r[5]:.4f} |")
PY
