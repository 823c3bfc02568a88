#!/usr/bin/env bash
# ReVision stage 1, Modality Substitution Pretraining: train the projector (LLM frozen) on
# unpaired text turned into pseudo-visual embeddings by a frozen alignment operator.
# Defaults are the paper's settings: Llama-3-8B-Instruct, LLM2CLIP-Openai-L-14-336,
# mlp2x_gelu, 1 epoch, lr 5e-4, `--version plain`, DeepSpeed ZeRO-2.
#
#   scripts/stage1_pretrain.sh --operator runs/realign --text-store feats/bunny_text \
#       --data data/bunny_pretrain_pseudo.json --output-dir checkpoints/revision-stage1
#
# --mode paired is the "w/ image" baseline: the same run on real image-caption pairs through
# the same tower (see scripts/stage1_paired_baseline.sh); "w/o align" is --operator none, C3
# is --operator <a c3 operator>. Everything else stays identical across these comparisons.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
    cat <<'USAGE'
Usage: stage1_pretrain.sh [options] [-- extra LLaVA train() flags]
  --data PATH            stage-1 json (records with text_id / text, or image for --mode paired)  [required]
  --operator DIR|none    fitted operator (revision fit); none = raw embeddings ("w/o align")      [required]
  --text-store DIR       feature store with the text embeddings named by text_id
  --image-store DIR      feature store with image embeddings keyed by the records' image paths
  --image-folder DIR     image root (--mode paired without --image-store)
  --mode pseudo|paired   pseudo text (ReVision, default) or real image-caption pairs (baseline)
  --llm ID|DIR           default meta-llama/Meta-Llama-3-8B-Instruct
  --encoder KIND         default llm2clip (or hf_clip)
  --encoder-model ID|DIR default microsoft/LLM2CLIP-Openai-L-14-336
  --text-model ID|DIR    LLM2CLIP text encoder, only for records with raw "text" (online)
  --num-tokens K         visual tokens per sample (one vector repeated K times), default 1
  --projector TYPE       default mlp2x_gelu
  --output-dir DIR       default ./checkpoints/revision-llama3-8b-stage1[-paired]
  --epochs N (1)  --lr LR (5e-4)  --batch-size B (32 per device)  --grad-accum N (1)
  --max-length N (2048)  --workers N (4)  --save-steps N (24000)  --tf32 True|False (True)
  --deepspeed JSON|none  default scripts/zero2.json; none = no DeepSpeed (needed with --launcher python)
  --launcher CMD         default "deepspeed"; e.g. "torchrun --nproc_per_node 8", "python" (one process)
  --train-module MOD     LLaVA entry point; default llava.train.train_mem (flash-attention 2) when
                         flash_attn is installed, else llava.train.train (default attention, CPU ok)
  --skip-bad-records F   train on the records that pass the start-up scan and list the others in F
                         (default: any bad record stops the run before step 1, all of them reported)
  --offline 0|1          never touch the hub for the encoder (default 0)
  --dry-run              print the command instead of running it
USAGE
}

DATA=""; OPERATOR=""; TEXT_STORE=""; IMAGE_STORE=""; IMAGE_FOLDER=""; MODE=pseudo
LLM=meta-llama/Meta-Llama-3-8B-Instruct
ENCODER=llm2clip; ENCODER_MODEL=microsoft/LLM2CLIP-Openai-L-14-336; TEXT_MODEL=""
NUM_TOKENS=1; PROJECTOR=mlp2x_gelu; OUTPUT_DIR=""
EPOCHS=1; LR=5e-4; BATCH_SIZE=32; GRAD_ACCUM=1; MAX_LENGTH=2048; WORKERS=4; SAVE_STEPS=24000; TF32=True
DEEPSPEED="$SCRIPTS_DIR/zero2.json"; LAUNCHER="${LAUNCHER:-deepspeed}"; OFFLINE=0
TRAIN_MODULE=""; SKIP_BAD_RECORDS=""

parse_flags "data operator text-store image-store image-folder mode llm encoder encoder-model text-model num-tokens
             projector output-dir epochs lr batch-size grad-accum max-length workers save-steps tf32 deepspeed
             launcher offline train-module skip-bad-records" "$@"

case "$MODE" in
    pseudo) OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/revision-llama3-8b-stage1}" ;;
    paired) OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/revision-llama3-8b-stage1-paired}"
            [[ -n "$IMAGE_FOLDER$IMAGE_STORE" ]] || die "--mode paired needs --image-folder or --image-store" ;;
    *) die "--mode must be pseudo or paired" ;;
esac
require_path "--data" "$DATA"
[[ "$OPERATOR" == none ]] || require_path "--operator" "$OPERATOR"
[[ -z "$TEXT_STORE" ]] || require_path "--text-store" "$TEXT_STORE"
[[ -z "$IMAGE_STORE" ]] || require_path "--image-store" "$IMAGE_STORE"
[[ -z "$IMAGE_FOLDER" ]] || require_path "--image-folder" "$IMAGE_FOLDER"
require_path "--llm" "$LLM" 1
require_path "--encoder-model" "$ENCODER_MODEL" 1
check_deepspeed

ARGS=(
    --model_name_or_path "$LLM"
    --version plain
    --data_path "$DATA"
    --vision_tower "$(tower_spec)"
    --mm_projector_type "$PROJECTOR"
    --tune_mm_mlp_adapter True
    --mm_use_im_start_end False
    --mm_use_im_patch_token False
)
append_training_args
[[ -z "$IMAGE_FOLDER" ]] || ARGS+=(--image_folder "$IMAGE_FOLDER")
launch "${ARGS[@]}"
