# Shared by the ReVision launch scripts (sourced, not run).
#
# Flags are "--name value" (or "--name=value"); names map to upper-case variables with
# dashes as underscores (--encoder-model -> ENCODER_MODEL). Everything after "--" goes to
# LLaVA's train() unchanged. --dry-run prints the command instead of running it.

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
EXTRA_ARGS=()
DRY_RUN="${DRY_RUN:-0}"

parse_flags() {
    # $1: space-separated list of known flag names; then the script's arguments.
    local known
    known=" $(echo $1) "  # one space between names, whatever the caller's line breaks
    shift
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --) shift; EXTRA_ARGS+=("$@"); break ;;
            --dry-run) DRY_RUN=1; shift ;;
            -h|--help) usage; exit 0 ;;
            --*=*)
                local name="${1%%=*}"; name="${name#--}"
                set_flag "$known" "$name" "${1#*=}"; shift ;;
            --*)
                local name="${1#--}"
                [[ $# -ge 2 ]] || die "--$name needs a value"
                set_flag "$known" "$name" "$2"; shift 2 ;;
            *) die "unexpected argument '$1' (LLaVA flags go after --)" ;;
        esac
    done
}

set_flag() {
    local known="$1" name="$2" value="$3"
    [[ "$known" == *" $name "* ]] || die "unknown option --$name (see --help)"
    local var="${name//-/_}"; var="${var^^}"
    printf -v "$var" '%s' "$value"
}

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

# A local path must exist; a hub id ("org/name") may be left to the hub.
require_path() {
    local what="$1" value="$2" hub_ok="${3:-0}"
    [[ -n "$value" ]] || die "$what is required"
    if [[ -e "$value" ]]; then return 0; fi
    if [[ "$hub_ok" == 1 && "$value" != /* && "$value" != .* && "$value" =~ ^[^/]+/[^/]+$ ]]; then return 0; fi
    die "$what not found: $value"
}

# --deepspeed JSON, or none for no DeepSpeed. A plain "python" launcher starts one process with
# no torch.distributed environment, where DeepSpeed falls back to MPI discovery and dies on a
# missing mpi4py: refuse that pairing here, in one line, instead.
check_deepspeed() {
    if [[ "$DEEPSPEED" == none ]]; then return 0; fi
    require_path "--deepspeed" "$DEEPSPEED"
    local first; read -r first _ <<< "${LAUNCHER}"
    if [[ "$(basename "$first")" == python* && "${LAUNCHER}" != *torch.distributed* ]]; then
        die "--launcher ${LAUNCHER} runs one process without torch.distributed, which DeepSpeed needs: pass --deepspeed none, or use --launcher deepspeed / torchrun"
    fi
}

abspath() { if [[ "$1" == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }

# revision:<spec> from the tower flags (absolute paths, so the spec works from any directory).
tower_spec() {
    local spec="revision:encoder=${ENCODER},encoder_model=${ENCODER_MODEL},num_tokens=${NUM_TOKENS}"
    if [[ -n "${OPERATOR:-}" && "$OPERATOR" != none ]]; then spec+=",operator=$(abspath "$OPERATOR")"; else spec+=",operator=none"; fi
    [[ -n "${TEXT_STORE:-}" ]] && spec+=",text_store=$(abspath "$TEXT_STORE")"
    [[ -n "${IMAGE_STORE:-}" ]] && spec+=",image_store=$(abspath "$IMAGE_STORE")"
    [[ -n "${TEXT_MODEL:-}" ]] && spec+=",encoder_options.text_model=${TEXT_MODEL}"
    [[ "${OFFLINE:-0}" == 1 || "${OFFLINE:-}" == true ]] && spec+=",offline=true"
    echo "$spec"
}

# LLaVA's own entry point: train_mem (flash-attention 2, CUDA) when flash_attn is installed,
# else llava.train.train (transformers' default attention; CPU works). --train-module overrides.
train_module() {
    if [[ -n "${TRAIN_MODULE:-}" ]]; then echo "$TRAIN_MODULE"; return; fi
    if "${PYTHON:-python}" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("flash_attn") is None)' 2>/dev/null; then
        echo llava.train.train_mem
    else
        echo llava.train.train
    fi
}

launch() {
    # $@: LLaVA train() arguments. LAUNCHER: "deepspeed" (default), "torchrun ...", or "python".
    local -a cmd
    read -r -a cmd <<< "${LAUNCHER}"
    local module_flag=-m
    [[ "$(basename "${cmd[0]}")" == deepspeed ]] && module_flag=--module
    cmd+=("$module_flag" "$(train_module)" "$@" "${EXTRA_ARGS[@]}")
    if [[ -n "${SKIP_BAD_RECORDS:-}" ]]; then export REVISION_SKIP_BAD_RECORDS="$(abspath "$SKIP_BAD_RECORDS")"; fi
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '%s\n' "${cmd[@]}"
        return 0
    fi
    echo "+ ${cmd[*]}" >&2
    exec "${cmd[@]}"
}

# Trainer flags every stage shares; each stage script sets the variables and its own flags.
append_training_args() {
  [[ "$DEEPSPEED" == none ]] || ARGS+=(--deepspeed "$DEEPSPEED")
  ARGS+=(
    --bf16 True
    --output_dir "$OUTPUT_DIR"
    --num_train_epochs "$EPOCHS"
    --per_device_train_batch_size "$BATCH_SIZE"
    --per_device_eval_batch_size 4
    --gradient_accumulation_steps "$GRAD_ACCUM"
    --eval_strategy no
    --save_strategy steps
    --save_steps "$SAVE_STEPS"
    --save_total_limit 1
    --learning_rate "$LR"
    --weight_decay 0.
    --warmup_ratio 0.03
    --lr_scheduler_type cosine
    --logging_steps 1
    --tf32 "$TF32"
    --model_max_length "$MAX_LENGTH"
    --gradient_checkpointing True
    --dataloader_num_workers "$WORKERS"
    --lazy_preprocess True
    --report_to none
  )
}
