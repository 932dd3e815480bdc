#!/usr/bin/env bash
# The GPU checks in one script, for a machine with one CUDA GPU:
#   1. smoke: one epoch of each model on a tiny synthetic tree on CUDA, and an evaluation (stops on failure);
#   2. benchmarks/bench.py at 256 px, bs 32, on the real data (alone on the GPU);
#   3. both models at 256 px for 30 epochs on the real data, from scratch (the two share the GPU), and beside them
#   4. a 128 px / 6-epoch recipe sweep from scratch (the CPU budget), three runs at a time.
# Everything ends by DEADLINE seconds after the start; run directories (without weights) and logs are
# packed into $OUT/runs.tgz, the last history rows into $OUT/summary.txt.
# Usage: OUT=/tmp/gpu-out DATA=path/to/covid-qu-ex bash benchmarks/gpu_check.sh
set -u
DATA=${DATA:-.device-data/covid-qu-ex}
OUT=${OUT:-/tmp/gpu-out}
DEADLINE=${DEADLINE:-520}
SWEEP=${SWEEP:-12}  # how many of the sweep runs to do
DEVICE=${DEVICE:-cuda}
ONLY_SWEEP=${ONLY_SWEEP:-0}  # 1: skip the bench and the 256 px runs
PAR=${PAR:-3}  # sweep runs at a time
SWEEP_FILE=${SWEEP_FILE:-}  # a file of sweep lines (NAME ARCH OPTIONS...) instead of the list below
rm -rf /tmp/gpu-runs /tmp/gpu-logs /tmp/s  # a warm machine keeps the last call's files
mkdir -p "$OUT" /tmp/gpu-logs
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 MPLBACKEND=Agg
export COVFAST_RUNS_DIR=/tmp/gpu-runs
cf="python3 -m covfast"
T0=$(date +%s)
say() { echo "[$(($(date +%s) - T0)) s] $*"; }
left() { echo $((DEADLINE - ($(date +%s) - T0))); }
atleast() { [ "$1" -gt "$2" ] && echo "$1" || echo "$2"; }  # timeout never below $2 s

pack() {
  say "packing"
  kill $nvsmi 2>/dev/null
  python3 - <<'EOF' | tee "$OUT/summary.txt"
import glob, json, os
import pandas as pd
for d in sorted(glob.glob("/tmp/gpu-runs/*")):
    h = os.path.join(d, "history.csv")
    if not os.path.exists(h):
        continue
    cfg = json.load(open(os.path.join(d, "config.json")))
    hist = pd.read_csv(h)
    if not len(hist):
        continue
    last = hist.iloc[-1]
    print(f"{os.path.basename(d)}: {cfg['arch']} size {cfg['img_size']} bs {cfg['bs']} lr {cfg.get('lr_used')} "
          f"aug {cfg.get('augment', True)} ew {cfg.get('empty_weight')} seed {cfg['seed']} "
          f"epochs {len(hist)}/{cfg['epochs']} status {cfg.get('status')} precision {cfg.get('precision')} | "
          f"last: covid {last.valid_dice_covid:.4f} noncovid {last.valid_dice_noncovid:.4f} "
          f"mean {last.valid_dice_mean:.4f} | best mean {hist.valid_dice_mean.max():.4f} | "
          f"s/epoch median {hist.seconds.median():.2f} total {hist.seconds.sum():.1f}")
EOF
  tar czf "$OUT/runs.tgz" --exclude='*.pth' -C /tmp gpu-runs gpu-logs 2>/dev/null
  # the Attention U-Net's weights are small enough to bring back for evaluation and a report
  cp /tmp/gpu-runs/gpu256-attention-unet/model.pth "$OUT/gpu256-attention-unet-model.pth" 2>/dev/null
  say "done"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, fastai; print('torch', torch.__version__, 'fastai', fastai.__version__, 'cuda', torch.cuda.is_available())"
nvsmi=
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 2 > "$OUT/gpu_util.csv" &
  nvsmi=$!
fi

say "1. smoke"
[ "${SMOKE:-1}" = 1 ] && { $cf synth /tmp/s --per-class 8 --size 64 --seed 0 >/dev/null &&
  timeout 150 $cf train attention-unet --data /tmp/s --size 64 --epochs 1 --bs 8 --name smoke-att --device $DEVICE &&
  timeout 150 $cf train resnet34 --data /tmp/s --size 64 --epochs 1 --bs 8 --no-pretrained --name smoke-r34 --device $DEVICE &&
  timeout 100 $cf evaluate /tmp/gpu-runs/smoke-att --split Test || { say "SMOKE FAILED"; pack; exit 1; }; }

if [ "$ONLY_SWEEP" = 0 ]; then
  say "2. bench 256 px bs 32"
  timeout $(atleast $(($(left) - 300)) 30) python3 benchmarks/bench.py --size 256 --bs 32 --data "$DATA" \
    --json "$OUT/bench256.json" 2>&1 | tee "$OUT/bench256.md"

  say "3. 30-epoch runs at 256 px (both at once) and 4. the 128 px sweep"
  timeout $(atleast $(($(left) - 15)) 30) $cf train attention-unet --data "$DATA" --size 256 --epochs 30 --bs 16 --lr 3e-3 \
    --no-pretrained --workers 4 --name gpu256-attention-unet > /tmp/gpu-logs/gpu256-attention-unet.log 2>&1 &
  p1=$!
  timeout $(atleast $(($(left) - 15)) 30) $cf train resnet34 --data "$DATA" --size 256 --epochs 30 --bs 16 --lr 1e-3 \
    --no-pretrained --workers 4 --name gpu256-resnet34 > /tmp/gpu-logs/gpu256-resnet34.log 2>&1 &
  p2=$!
fi

sweep_one() {  # NAME ARCH OPTIONS...
  local name=$1 arch=$2; shift 2
  local t=$(($(left) - 15))
  [ $t -lt 60 ] && { echo "skip $name: $t s left"; return; }
  timeout $t $cf train "$arch" --data "$DATA" --size 128 --epochs 6 --bs 8 --no-pretrained --workers 2 \
    --name "s128-$name" "$@" > "/tmp/gpu-logs/s128-$name.log" 2>&1
  echo "$name exit $?"
}
export -f sweep_one left; export T0 DEADLINE DATA cf
sweep_list() {
  if [ -n "$SWEEP_FILE" ]; then cat "$SWEEP_FILE"; return; fi
  printf '%s\n' \
    "att-base attention-unet --lr 3e-3" \
    "r34-base resnet34 --lr 1e-3" \
    "att-noaug attention-unet --lr 3e-3 --no-augment" \
    "r34-noaug resnet34 --lr 1e-3 --no-augment" \
    "att-ew05 attention-unet --lr 3e-3 --empty-weight 0.5" \
    "r34-lr2e3 resnet34 --lr 2e-3" \
    "att-lr2e3 attention-unet --lr 2e-3" \
    "r34-ew05 resnet34 --lr 1e-3 --empty-weight 0.5" \
    "att-seed1 attention-unet --lr 3e-3 --seed 1" \
    "r34-seed1 resnet34 --lr 1e-3 --seed 1" \
    "r34-lr3e3 resnet34 --lr 3e-3" \
    "att-noaug-ew05 attention-unet --lr 3e-3 --no-augment --empty-weight 0.5"
}
if [ "$SWEEP" -gt 0 ]; then
  sweep_list | head -n "$SWEEP" | xargs -P "$PAR" -I{} bash -c 'sweep_one {}'
fi
say "sweep finished; waiting for the 256 px runs"
if [ "$ONLY_SWEEP" = 0 ]; then
  wait $p1 $p2
  tail -n 3 /tmp/gpu-logs/gpu256-*.log
fi
pack
