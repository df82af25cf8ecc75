#!/usr/bin/env bash
# Finetune a pretrained Recformer on one processed dataset, as the reference run did
# (128 epochs per stage at most, batch 16, gradient accumulation 8, fp16, full softmax).
#
# Usage:  bash finetune.sh DATA_PATH [PRETRAIN_CKPT] [DEVICE] [NUM_GPUS] [extra finetune.py flags...]
#    or:  DATA_PATH=... PRETRAIN_CKPT=... DEVICE=cuda:0 NUM_GPUS=1 bash finetune.sh
#
# DATA_PATH      processed dataset folder, e.g. finetune_data/Scientific (see finetune_data/process.py)
# PRETRAIN_CKPT  pretrained checkpoint (default pretrain_ckpt/recformer_seqrec_ckpt.bin); any form
#                recformer.load_checkpoint accepts: released SeqRec or RecformerModel file,
#                save_pretrained folder, finetuned checkpoint
# DEVICE         auto (default), cpu, cuda, cuda:N, or a GPU index
# NUM_GPUS       processes, one per GPU (default: every visible GPU with DEVICE auto or cuda, else 1); more
#                than 1 starts finetune.py with torchrun on this machine. The global batch stays the
#                reference's 128 sequences per step whatever the number (--global_batch_size 128, which a
#                later --global_batch_size flag overrides; it must divide by NUM_GPUS).
#
# The six datasets of the paper (Table 2), built from Amazon 2018 files with finetune_data/process.py:
#   Scientific  <- Industrial_and_Scientific      Instruments <- Musical_Instruments
#   Arts        <- Arts_Crafts_and_Sewing         Office      <- Office_Products
#   Games       <- Video_Games (paper used --user_sample_rate 0.2)
#   Pet         <- Pet_Supplies
# Outputs: <output_dir>/<dataset>/ (best_model.bin, best_model/, metrics.json, train_log.jsonl, ...).
#
# Python: $PYTHON when set, else .venv/bin/python beside this script when it exists (what `make demo`
# and `make test` create), else `python` from the PATH.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$HERE/.venv/bin/python" ]; then PYTHON=$HERE/.venv/bin/python; else PYTHON=python; fi
fi
DATA_PATH=${1:-${DATA_PATH:-}}
PRETRAIN_CKPT=${2:-${PRETRAIN_CKPT:-pretrain_ckpt/recformer_seqrec_ckpt.bin}}
DEVICE=${3:-${DEVICE:-auto}}
if [ -z "$DATA_PATH" ]; then
    echo "usage: bash finetune.sh DATA_PATH [PRETRAIN_CKPT] [DEVICE] [NUM_GPUS] [extra flags]" >&2
    exit 2
fi
shift $(( $# < 3 ? $# : 3 ))
# A 4th argument that is a number is NUM_GPUS; anything else (a flag) is left for finetune.py.
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then NUM_GPUS=$1; shift; fi
if [ -z "${NUM_GPUS:-}" ]; then
    NUM_GPUS=1
    if [ "$DEVICE" = "auto" ] || [ "$DEVICE" = "cuda" ]; then
        NUM_GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
        if [ "$NUM_GPUS" -lt 1 ]; then NUM_GPUS=1; fi
    fi
fi
if ! [[ "$NUM_GPUS" =~ ^[1-9][0-9]*$ ]]; then
    echo "finetune.sh: NUM_GPUS must be a positive number, got '$NUM_GPUS'" >&2
    exit 2
fi
FP16=--fp16
if [ "$DEVICE" = "cpu" ] || [ "$DEVICE" = "-1" ]; then FP16=; fi
LAUNCH=("$PYTHON")
if [ "$NUM_GPUS" -gt 1 ]; then LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NUM_GPUS"); fi
exec "${LAUNCH[@]}" "$HERE/finetune.py" \
    --pretrain_ckpt "$PRETRAIN_CKPT" \
    --data_path "$DATA_PATH" \
    --num_train_epochs 128 \
    --batch_size 16 \
    --gradient_accumulation_steps 8 \
    --global_batch_size 128 \
    --device "$DEVICE" \
    $FP16 \
    --finetune_negative_sample_size -1 \
    "$@"
