#!/usr/bin/env bash
# The default recipe on one CUDA GPU, with its ensemble, reported on Test:
#   1. both models at 256 px for 30 epochs on the real data (three classes, lungs and image head at their defaults,
#      from scratch, bs 16, each model's lr / Dice weight / augmentation of docs/results.md), side by side; beside
#      them (SIX=1) the ResNet34 U-Net's 6-epoch, 128-px protocol, seeds 42 and 1;
#   2. every run calibrated on Val (sensitivity 0.95) and scored on Test;
#   3. `covfast ensemble` of the two 256-px runs, calibrated on Val and scored on Test, and `covfast compare`
#      of the ensemble against its members (paired per-image Dice differences on Test).
# Everything ends by DEADLINE seconds after the start (a training still going then is stopped with SIGINT and keeps
# its best finished epoch); run directories without weights and the logs go to $OUT/runs.tgz, one line per run
# to $OUT/summary.txt, the Attention U-Net's model.pth beside them.
# Usage: OUT=/tmp/gpu-out DATA=path/to/covid-qu-ex bash benchmarks/gpu_recipe.sh
# A CPU dry run on synthetic data: DEVICE=cpu SIZE=32 EPOCHS=1 SIX=0 EXTRA="--features 4,8" DATA=synth bash ...
set -u
DATA=${DATA:-/tmp/data/covid-qu-ex}
OUT=${OUT:-/tmp/gpu-out}
DEADLINE=${DEADLINE:-540}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-256}
EPOCHS=${EPOCHS:-30}
BS=${BS:-16}
WORKERS=${WORKERS:-6}
SIX=${SIX:-1}
EXTRA=${EXTRA:-}
RUNS=${COVFAST_RUNS_DIR:-/tmp/gpu-runs}
rm -rf "$RUNS" /tmp/gpu-logs  # a warm machine keeps the last call's files
mkdir -p "$OUT" /tmp/gpu-logs
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 MPLBACKEND=Agg COVFAST_RUNS_DIR=$RUNS
cf="python3 -m covfast"
T0=$(date +%s)
say() { echo "[$(($(date +%s) - T0)) s] $*"; }
left() { echo $((DEADLINE - ($(date +%s) - T0))); }
logs=/tmp/gpu-logs

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$OUT/gpu_util.csv" &
  nvsmi=$!
fi
python3 -c "import torch, fastai; print('torch', torch.__version__, 'fastai', fastai.__version__, 'cuda', torch.cuda.is_available())"

common="--data $DATA --epochs $EPOCHS --bs $BS --no-pretrained --classes all --seed 42 --device $DEVICE $EXTRA"
budget=$(($(left) - 130))  # what the scoring after training needs
say "1. training (stopped at $budget s if still going)"
timeout -s INT $budget $cf train attention-unet $common --size $SIZE --lr 2e-3 --dice-weight 4 --workers $WORKERS \
  --name gpu-aunet > $logs/gpu-aunet.log 2>&1 &
p1=$!
timeout -s INT $budget $cf train resnet34 $common --size $SIZE --lr 1e-3 --dice-weight 4 --no-augment --workers $WORKERS \
  --name gpu-r34 > $logs/gpu-r34.log 2>&1 &
p2=$!
pids="$p1 $p2"
if [ "$SIX" = 1 ]; then
  for seed in 42 1; do
    timeout -s INT $budget $cf train resnet34 --data $DATA --size 128 --epochs 6 --bs 8 --no-pretrained --classes all \
      --seed $seed --lr 1e-3 --dice-weight 4 --no-augment --workers 1 --device $DEVICE $EXTRA \
      --name lung-r34-s$seed > $logs/lung-r34-s$seed.log 2>&1 &
    pids="$pids $!"
  done
fi
wait $pids
for f in $logs/*.log; do echo "== $f"; tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -n 2; done

say "2. calibrate on Val, evaluate on Test"
score() {  # RUN
  [ -f "$RUNS/$1/config.json" ] || { echo "$1: no run"; return; }
  $cf calibrate "$1" --device $DEVICE > $logs/$1-calibrate.log 2>&1 &&
    $cf evaluate "$1" --split Test --device $DEVICE > $logs/$1-evaluate.log 2>&1 || echo "$1: scoring failed"
}
scoring=""
for r in gpu-aunet gpu-r34 $([ "$SIX" = 1 ] && echo lung-r34-s42 lung-r34-s1); do score $r & scoring="$scoring $!"; done
wait $scoring  # not a bare wait: nvidia-smi's logger runs in the background until the end

say "3. the ensemble of the two 256-px runs"
if $cf ensemble gpu-aunet gpu-r34 --name gpu-ensemble > $logs/gpu-ensemble.log 2>&1; then
  score gpu-ensemble
  $cf compare gpu-ensemble gpu-aunet gpu-r34 --split Test --device $DEVICE --out "$RUNS/compare" > $logs/compare.log 2>&1 ||
    echo "compare failed"
else
  cat $logs/gpu-ensemble.log
fi

say "packing"
[ -n "${nvsmi:-}" ] && kill $nvsmi 2>/dev/null
python3 - "$RUNS" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
import pandas as pd
cut = lambda v: "-" if v is None or v != v else f"{int(v * 10000) / 10000:.4f}"
for d in sorted(Path(sys.argv[1]).iterdir()):
    if not (d / "config.json").is_file():
        continue
    cfg = json.loads((d / "config.json").read_text())
    line = f"{d.name}: {cfg['arch']} {cfg['img_size']} px, status {cfg.get('status')}"
    if (d / "history.csv").is_file():
        h = pd.read_csv(d / "history.csv")
        line += f", epochs {len(h)}/{cfg['epochs']}, {h.seconds.sum():.1f} s (median epoch {h.seconds.median():.2f} s)"
    s = d / "eval" / "Test" / "summary.json"
    if s.is_file():
        g = {r["group"]: r for r in json.loads(s.read_text())["groups"]}
        a = g["All"]
        line += (f" | Test COVID-19 Dice {cut(g['COVID-19']['dice'])}, Non-COVID empty {cut(g['Non-COVID']['specificity'])}, "
                 f"Normal empty {cut(g['Normal']['specificity'])}, AUC {cut(a.get('auc'))}, lung Dice {cut(a.get('lung_dice'))}, "
                 f"severity MAE own lungs {cut(a.get('severity_mae_pred_lung'))}, COVID-19 band agreement own lungs "
                 f"{cut(g['COVID-19'].get('severity_band_agreement_pred_lung'))}")
    print(line)
p = Path(sys.argv[1]) / "compare" / "paired.csv"
if p.is_file():
    print(pd.read_csv(p).to_string())
EOF
tar czf "$OUT/runs.tgz" --exclude='*.pth' --exclude='*.png' -C "$(dirname "$RUNS")" "$(basename "$RUNS")" -C /tmp gpu-logs 2>/dev/null
cp "$RUNS/gpu-aunet/model.pth" "$OUT/gpu-aunet-model.pth" 2>/dev/null
say "done"
