#!/usr/bin/env bash
# The reference pretraining run: per-GPU batch 16, gradient accumulation 8, 32 epochs,
# lr 5e-5, fp16, frozen word embeddings, DeepSpeed ZeRO-2, seed 42, validation every 2000 batches
# (--valid_step 250: it counts optimizer steps, 250 x 8 accumulated batches).
# Nothing to edit: GPUs and nodes come from the environment.
#
#   bash lightning_run.sh                         # every visible GPU of this machine
#   CUDA_VISIBLE_DEVICES=0,1 bash lightning_run.sh
#   NUM_NODES=2 NODE_RANK=0 MASTER_ADDR=host0 MASTER_PORT=29500 bash lightning_run.sh   # on each node
#
# Paths (override through the environment): DATA_DIR (train.json, dev.json, meta_data.json),
# OUTPUT_DIR, MODEL (Longformer hub id or folder), START (start point from save_longformer_ckpt.py;
# made here when missing), WORKERS (tokenizer threads and data-loader workers per process: 8, as the
# reference, or fewer when this machine has fewer cores). Extra arguments are passed on to
# lightning_pretrain.py.
# Python: $PYTHON when set, else .venv/bin/python beside this script when it exists (what `make demo`
# and `make test` create), else `python` from the PATH.
set -euo pipefail
cd "$(dirname "$0")"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=$PWD/.venv/bin/python; else PYTHON=python; fi
fi
CORES=$(nproc 2>/dev/null || echo 8)
WORKERS=${WORKERS:-$(( CORES < 8 ? CORES : 8 ))}
MODEL=${MODEL:-allenai/longformer-base-4096}
START=${START:-longformer_ckpt/longformer-base-4096.bin}
DATA_DIR=${DATA_DIR:-pretrain_data}
OUTPUT_DIR=${OUTPUT_DIR:-result/recformer_pretraining}
NUM_NODES=${NUM_NODES:-${SLURM_NNODES:-1}}
if [[ -z "${NUM_GPUS:-}" ]]; then
    NUM_GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
fi
if [[ "$NUM_GPUS" -lt 1 ]]; then
    echo "lightning_run.sh: no CUDA GPU visible; the reference run needs GPUs (lightning_pretrain.py runs on CPU with --device cpu)" >&2
    exit 1
fi

if [[ ! -f "$START" ]]; then
    "$PYTHON" save_longformer_ckpt.py --model_name_or_path "$MODEL" --output "$START"
fi

exec "$PYTHON" lightning_pretrain.py \
    --model_name_or_path "$MODEL" \
    --longformer_ckpt "$START" \
    --train_file "$DATA_DIR/train.json" \
    --dev_file "$DATA_DIR/dev.json" \
    --item_attr_file "$DATA_DIR/meta_data.json" \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs 32 \
    --gradient_accumulation_steps 8 \
    --preprocessing_num_workers "$WORKERS" \
    --dataloader_num_workers "$WORKERS" \
    --batch_size 16 \
    --learning_rate 5e-5 \
    --temp 0.05 \
    --valid_step 250 \
    --log_step 100 \
    --device "$NUM_GPUS" \
    --num_nodes "$NUM_NODES" \
    --strategy deepspeed_stage_2 \
    --fp16 \
    --fix_word_embedding \
    --seed 42 \
    "$@"
