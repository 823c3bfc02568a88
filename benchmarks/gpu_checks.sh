#!/usr/bin/env bash
# The GPU measurements of issue 15, as one prepared command for a GPU machine that has torch,
# transformers, safetensors, numpy and tqdm but no hub access and no install of this package:
#
#   bash benchmarks/gpu_checks.sh realign   # 2M x 1280 fit and apply on cuda (~5 min)
#   bash benchmarks/gpu_checks.sh embed     # revision embed vs bare forward, Llama-3-8B shape (~4 min)
#   bash benchmarks/gpu_checks.sh all
#
# Each part stays under its own timeout so one call fits a 10-minute command limit. Logs go to
# $OUT (if set) or ./gpu_checks_out. Sizes can be shrunk to check the plumbing on a CPU:
#   DEVICE=cpu ROWS=3000 TEXTS=96 SHAPE=tiny PYTHON=.venv/bin/python bash benchmarks/gpu_checks.sh all
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
what=${1:-all}
case "$what" in all|realign|embed) ;; *) echo "usage: gpu_checks.sh [all|realign|embed]" >&2; exit 2 ;; esac
PYTHON=${PYTHON:-python3} DEVICE=${DEVICE:-cuda} ROWS=${ROWS:-2M} TEXTS=${TEXTS:-5000} SHAPE=${SHAPE:-llama3-8b}
logs=${OUT:-gpu_checks_out}
data=${DATA_DIR:-/tmp/revision_bench_data}
mkdir -p "$logs" "$data"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$logs/gpu.txt"; fi
"$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$logs/gpu.txt"
if [[ $what == all || $what == realign ]]; then
    timeout "${REALIGN_TIMEOUT:-420}" "$PYTHON" benchmarks/bench_realign.py --rows "$ROWS" --device "$DEVICE" \
        --data-dir "$data" 2>&1 | tee "$logs/bench_realign.txt"
fi
if [[ $what == all || $what == embed ]]; then
    timeout "${EMBED_TIMEOUT:-420}" "$PYTHON" benchmarks/bench_embed.py --device "$DEVICE" --shape "$SHAPE" \
        --texts "$TEXTS" --batch 128 2>&1 | grep -v "Writing model shards\|Loading weights" | tee "$logs/bench_embed.txt"
fi
