#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md (issue 18) in one command, on a machine with a CUDA card:
#
#   bash benchmarks/bench_gpu.sh [SPEAKER_DIR]
#
# 1. the paper preset's training time per epoch (and for 500) on the card, fp32 and bf16 autocast;
# 2. per-frame inference of all three outputs (vertices, blendshapes, one auto-regressive atlas step)
#    at batch 1, and batched throughput, for the paper and cpu presets (benchmarks/bench_predict.py).
# Without SPEAKER_DIR it makes a 61 s synthetic speaker first (the size of the anchor clip; speed does
# not depend on the face), so it needs nothing outside the working tree. PYTHON overrides the
# interpreter (default .venv/bin/python); OUT the scratch folder (default out/bench_gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-out/bench_gpu}
mkdir -p "$OUT"
"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0) if ok else 'no CUDA device'); sys.exit(0 if ok else 1)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
SPEAKER=${1:-}
if [ -z "$SPEAKER" ]; then
  SPEAKER=$OUT/speaker
  if [ ! -f "$SPEAKER/meta.json" ]; then
    "$PY" -m lipsync_engine synth-video --duration 61 --fps 25 --overwrite "$OUT/synth61.mp4"
    "$PY" -m lipsync_engine prepare "$OUT/synth61.mp4" -o "$SPEAKER"
  fi
fi
echo "# command: bash benchmarks/bench_gpu.sh $*  ($(date -u +%F))"
"$PY" benchmarks/bench_train.py epoch "$SPEAKER" --preset paper --device cuda --epochs 3 --precision off bf16
"$PY" benchmarks/bench_predict.py --device cuda --presets paper cpu --only speed
