#!/usr/bin/env bash
# `make demo`: the whole Recformer pipeline on the bundled demo data, on CPU, in a few minutes.
#   1. process the raw Amazon-format files (finetune_data/process.py, pretrain_data/*.py)
#   2. train a small BPE tokenizer on the item texts; a small random Longformer (scripts/demo/prepare_model.py)
#   3. turn it into a Recformer start point (save_longformer_ckpt.py)
#   4. pretrain briefly (lightning_pretrain.py) and convert the checkpoint (convert_pretrain_ckpt.py)
#   5. finetune in two stages (finetune.py)
#   6. compare with a popularity ranking (scripts/demo/report.py over recformer.report, what recformer-report
#      runs): $DEMO_OUT/report.md (the table) and $DEMO_OUT/Demo_curves.png (loss, lr, dev NDCG@10 per epoch)
# Settings can be overridden from the environment, e.g. PRETRAIN_STEPS=0 to skip pretraining.
# BACKBONE=folder starts from a local BERT-layout encoder (e.g. all-MiniLM-L6-v2; `make demo-minilm`)
# instead of the demo's own tiny model.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
OUT=${DEMO_OUT:-demo_output}
RAW=data/demo/raw
PRETRAIN_STEPS=${PRETRAIN_STEPS:-60}
PRETRAIN_LR=${PRETRAIN_LR:-5e-4}
FINETUNE_LR=${FINETUNE_LR:-1e-3}
EPOCHS=${EPOCHS:-16}
MAX_TOKENS=${MAX_TOKENS:-256}
WINDOW=${WINDOW:-32}
BACKBONE=${BACKBONE:-}
NAME=longformer-demo
[ -n "$BACKBONE" ] && NAME=backbone
export TOKENIZERS_PARALLELISM=false
start=$(date +%s)
# Phase timing: `step` closes the running phase and opens the next; `phase_summary` prints them all.
millis() { echo $(( $(date +%s%N) / 1000000 )); }
phase_names=() phase_millis=() phase_name="" phase_start=$(millis)
close_phase() {
    local now
    now=$(millis)
    if [ -n "$phase_name" ]; then phase_names+=("$phase_name") phase_millis+=($(( now - phase_start ))); fi
    phase_name="$*" phase_start=$now
}
step() { close_phase "$*"; echo; echo "== [$(( $(date +%s) - start ))s] $*"; }
phase_summary() {
    close_phase ""
    local i total=0
    echo; echo "== phase times"
    for i in "${!phase_names[@]}"; do
        total=$(( total + phase_millis[i] ))
        printf '%6d.%d s  %s\n' $(( phase_millis[i] / 1000 )) $(( phase_millis[i] % 1000 / 100 )) "${phase_names[i]}"
    done
    printf '%6d.%d s  total\n' $(( total / 1000 )) $(( total % 1000 / 100 ))
}

rm -rf "$OUT"
mkdir -p "$OUT"

step "1/6 processing the raw demo data"
$PY finetune_data/process.py --file_path $RAW/finetune/Demo_5.json.gz \
    --meta_file_path $RAW/finetune/meta_Demo.json.gz --output_path "$OUT/data/Demo" > "$OUT/process_finetune.log"
$PY pretrain_data/meta_data_process.py --meta_root $RAW/pretrain --seq_root $RAW/pretrain \
    --output_dir "$OUT/pretrain_data" > "$OUT/process_pretrain_meta.log"
$PY pretrain_data/interaction_data_process.py --seq_root $RAW/pretrain \
    --output_dir "$OUT/pretrain_data" > "$OUT/process_pretrain_seq.log"
tail -n 4 "$OUT/process_finetune.log"

if [ -n "$BACKBONE" ]; then
    step "2/6 pretrained encoder: $BACKBONE"
    SOURCE="$BACKBONE"
else
    step "2/6 tokenizer and a small Longformer from the demo item texts"
    $PY scripts/demo/prepare_model.py --meta_files "$OUT/data/Demo/meta_data.json" "$OUT/pretrain_data/meta_data.json" \
        --output_dir "$OUT/longformer-demo" --max_token_num "$MAX_TOKENS" --attention_window "$WINDOW"
    SOURCE="$OUT/longformer-demo"
fi

step "3/6 Recformer start point"
$PY save_longformer_ckpt.py --model_name_or_path "$SOURCE" --output "$OUT/start/$NAME.bin" \
    --max_token_num "$MAX_TOKENS" --attention_window "$WINDOW" > "$OUT/save_longformer_ckpt.log" 2>&1
grep -v "^INFO\|Writing model shards" "$OUT/save_longformer_ckpt.log" | tail -n 12
CKPT="$OUT/start/$NAME.bin"

if [ "$PRETRAIN_STEPS" -gt 0 ]; then
    step "4/6 pretraining for $PRETRAIN_STEPS steps (MLM + item-item contrastive)"
    $PY lightning_pretrain.py --model_name_or_path "$OUT/start/$NAME" --longformer_ckpt "$CKPT" \
        --train_file "$OUT/pretrain_data/train.json" --dev_file "$OUT/pretrain_data/dev.json" \
        --item_attr_file "$OUT/pretrain_data/meta_data.json" --output_dir "$OUT/pretrain" \
        --max_steps "$PRETRAIN_STEPS" --batch_size 32 --learning_rate "$PRETRAIN_LR" --warmup_steps 20 \
        --valid_step 50 --log_step 25 --device cpu --gradient_accumulation_steps 1
    $PY convert_pretrain_ckpt.py --lightning_ckpt "$OUT/pretrain/checkpoints/last.ckpt" \
        --longformer_ckpt "$CKPT" --output_dir "$OUT/pretrained" > "$OUT/convert.log" 2>&1
    tail -n 4 "$OUT/convert.log"
    CKPT="$OUT/pretrained/recformer_seqrec_ckpt.bin"
else
    step "4/6 pretraining skipped (PRETRAIN_STEPS=0)"
fi

step "5/6 finetuning (zero-shot test, stage 1, stage 2, final test)"
$PY finetune.py --pretrain_ckpt "$CKPT" --data_path "$OUT/data/Demo" --model_name_or_path "$OUT/start/$NAME" \
    --output_dir "$OUT/finetune" --num_train_epochs "$EPOCHS" --verbose 2 --batch_size 16 \
    --gradient_accumulation_steps 1 --learning_rate "$FINETUNE_LR" --warmup_steps 50 \
    --finetune_negative_sample_size -1 --device cpu

step "6/6 report"
$PY scripts/demo/report.py --run_dir "$OUT/finetune/Demo" --data_path "$OUT/data/Demo" \
    --output_dir "$OUT" --seconds $(( $(date +%s) - start ))
phase_summary
