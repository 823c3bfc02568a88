#!/usr/bin/env bash
# ReVision stage 2, Visual Instruction Tuning: full fine-tune on real images, projector
# initialised from stage 1. Defaults are the paper's settings: Llama-3-8B-Instruct,
# LLM2CLIP-Openai-L-14-336, mlp2x_gelu, 1 epoch, lr 1e-5, DeepSpeed ZeRO-3.
#
#   scripts/stage2_finetune.sh --operator runs/realign \
#       --projector-file checkpoints/revision-stage1/mm_projector.bin \
#       --data data/internvl_sft.json --image-folder data/images --output-dir checkpoints/revision-llava-llama3-8b
#
# The output directory name should contain "llava": LLaVA's load_pretrained_model only
# builds the vision tower for such names.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
    cat <<'USAGE'
Usage: stage2_finetune.sh [options] [-- extra LLaVA train() flags]
  --data PATH            instruction json (LLaVA format; records with image, or none)  [required]
  --image-folder DIR     image root                                                    [required]
  --projector-file PATH  stage-1 mm_projector.bin                                      [required]
  --operator DIR|none    the operator used in stage 1 (images go through op.align_image) [required]
  --image-store DIR      cached image embeddings keyed by the records' image paths (optional)
  --llm ID|DIR           default meta-llama/Meta-Llama-3-8B-Instruct
  --version NAME         conversation template, default llama_3 (LLaVA's v1 for Vicuna/Llama-2)
  --encoder KIND         default llm2clip   --encoder-model ID|DIR default microsoft/LLM2CLIP-Openai-L-14-336
  --num-tokens K         as in stage 1 (default 1)   --projector TYPE  default mlp2x_gelu
  --output-dir DIR       default ./checkpoints/revision-llava-llama3-8b
  --epochs N (1)  --lr LR (1e-5)  --batch-size B (16 per device)  --grad-accum N (2)
  --max-length N (2048)  --workers N (4)  --save-steps N (50000)  --tf32 True|False (True)
  --image-aspect-ratio pad|square (pad)
  --deepspeed JSON|none  default scripts/zero3.json; none = no DeepSpeed (needed with --launcher python)
  --launcher CMD         default "deepspeed"; e.g. "torchrun --nproc_per_node 8", "python" (one process)
  --train-module MOD     LLaVA entry point; default llava.train.train_mem (flash-attention 2) when
                         flash_attn is installed, else llava.train.train (default attention, CPU ok)
  --skip-bad-records F   train on the records that pass the start-up scan and list the others in F
                         (default: any bad record stops the run before step 1, all of them reported)
  --offline 0|1          never touch the hub for the encoder (default 0)
  --dry-run              print the command instead of running it

Defaults follow the official ReVision fine-tune: 16 per device x gradient accumulation 2
(global 256 on 8 GPUs), lr 1e-5, 1 epoch, full fine-tune, projector from stage 1.
Where they differ from it, and why:
  --num-tokens 1     the official code repeats the aligned vector 576 times; identical tokens
                     carry no more information and cost ~15x per step (docs/llava.md); pass
                     --num-tokens 576 to reproduce it exactly (stage 1 and 2 must agree)
  --version llama_3  LLaVA 1.2.2 has no Llama-3 template; the plugin's llama_3 template is
                     Llama-3-Instruct's chat format with exact label masking
  ZeRO-3             LLaVA's zero3.json (gradient_clipping auto); any DeepSpeed config works
USAGE
}

DATA=""; IMAGE_FOLDER=""; PROJECTOR_FILE=""; OPERATOR=""; IMAGE_STORE=""; TEXT_STORE=""; TEXT_MODEL=""
LLM=meta-llama/Meta-Llama-3-8B-Instruct; VERSION=llama_3
ENCODER=llm2clip; ENCODER_MODEL=microsoft/LLM2CLIP-Openai-L-14-336
NUM_TOKENS=1; PROJECTOR=mlp2x_gelu; OUTPUT_DIR=./checkpoints/revision-llava-llama3-8b
EPOCHS=1; LR=1e-5; BATCH_SIZE=16; GRAD_ACCUM=2; MAX_LENGTH=2048; WORKERS=4; SAVE_STEPS=50000; TF32=True
IMAGE_ASPECT_RATIO=pad; DEEPSPEED="$SCRIPTS_DIR/zero3.json"; LAUNCHER="${LAUNCHER:-deepspeed}"; OFFLINE=0
TRAIN_MODULE=""; SKIP_BAD_RECORDS=""

parse_flags "data image-folder projector-file operator image-store llm version encoder encoder-model num-tokens
             projector output-dir epochs lr batch-size grad-accum max-length workers save-steps tf32
             image-aspect-ratio deepspeed launcher offline train-module skip-bad-records" "$@"

require_path "--data" "$DATA"
require_path "--image-folder" "$IMAGE_FOLDER"
require_path "--projector-file" "$PROJECTOR_FILE"
[[ "$OPERATOR" == none ]] || require_path "--operator" "$OPERATOR"
[[ -z "$IMAGE_STORE" ]] || require_path "--image-store" "$IMAGE_STORE"
require_path "--llm" "$LLM" 1
require_path "--encoder-model" "$ENCODER_MODEL" 1
check_deepspeed

ARGS=(
    --model_name_or_path "$LLM"
    --version "$VERSION"
    --data_path "$DATA"
    --image_folder "$IMAGE_FOLDER"
    --vision_tower "$(tower_spec)"
    --pretrain_mm_mlp_adapter "$PROJECTOR_FILE"
    --mm_projector_type "$PROJECTOR"
    --mm_use_im_start_end False
    --mm_use_im_patch_token False
    --image_aspect_ratio "$IMAGE_ASPECT_RATIO"
    --group_by_modality_length True
)
append_training_args
launch "${ARGS[@]}"
