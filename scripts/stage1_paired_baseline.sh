#!/usr/bin/env bash
# The paired-data baseline ("w/ image"): ReVision's stage 1 on real image-caption pairs
# instead of unpaired text, through the same tower, operator (op.align_image) and flags.
# It is stage1_pretrain.sh --mode paired, so every other setting is identical by construction.
#
#   scripts/stage1_paired_baseline.sh --operator runs/realign --data data/pairs.json \
#       --image-folder data/images --output-dir checkpoints/revision-stage1-paired
set -euo pipefail
if [[ " $* " == *" -h "* || " $* " == *" --help "* ]]; then
    echo "stage1_paired_baseline.sh = stage1_pretrain.sh --mode paired; it takes the same options:"
fi
exec "$(dirname "${BASH_SOURCE[0]}")/stage1_pretrain.sh" --mode paired "$@"
