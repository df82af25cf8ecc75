#!/usr/bin/env bash
# Finetune a pretrained Recformer on one processed dataset, as the reference run did
# (128 epochs per stage at most, batch 16, gradient accumulation 8, fp16, full softmax).
#
# Usage:  bash finetune.sh DATA_PATH [PRETRAIN_CKPT] [DEVICE] [extra finetune.py flags...]
#    or:  DATA_PATH=... PRETRAIN_CKPT=... DEVICE=cuda:0 bash finetune.sh
#
# DATA_PATH      processed dataset folder, e.g. finetune_data/Scientific (see finetune_data/process.py)
# PRETRAIN_CKPT  pretrained checkpoint (default pretrain_ckpt/recformer_seqrec_ckpt.bin); any form
#                recformer.load_checkpoint accepts: released SeqRec or RecformerModel file,
#                save_pretrained folder, finetuned checkpoint
# DEVICE         auto (default), cpu, cuda, cuda:N, or a GPU index
#
# The six datasets of the paper (Table 2), built from Amazon 2018 files with finetune_data/process.py:
#   Scientific  <- Industrial_and_Scientific      Instruments <- Musical_Instruments
#   Arts        <- Arts_Crafts_and_Sewing         Office      <- Office_Products
#   Games       <- Video_Games (paper used --user_sample_rate 0.2)
#   Pet         <- Pet_Supplies
# Outputs: <output_dir>/<dataset>/ (best_model.bin, best_model/, metrics.json, train_log.jsonl, ...).
set -euo pipefail
DATA_PATH=${1:-${DATA_PATH:-}}
PRETRAIN_CKPT=${2:-${PRETRAIN_CKPT:-pretrain_ckpt/recformer_seqrec_ckpt.bin}}
DEVICE=${3:-${DEVICE:-auto}}
if [ -z "$DATA_PATH" ]; then
    echo "usage: bash finetune.sh DATA_PATH [PRETRAIN_CKPT] [DEVICE] [extra flags]" >&2
    exit 2
fi
shift $(( $# < 3 ? $# : 3 ))
FP16=--fp16
if [ "$DEVICE" = "cpu" ] || [ "$DEVICE" = "-1" ]; then FP16=; fi
exec python "$(dirname "$0")/finetune.py" \
    --pretrain_ckpt "$PRETRAIN_CKPT" \
    --data_path "$DATA_PATH" \
    --num_train_epochs 128 \
    --batch_size 16 \
    --gradient_accumulation_steps 8 \
    --device "$DEVICE" \
    $FP16 \
    --finetune_negative_sample_size -1 \
    "$@"
