#!/usr/bin/env bash
# GPU check of the pretraining path (issue 5): a short longformer-base-sized run with random weights
# on synthetic data through lightning_pretrain.py with DeepSpeed ZeRO-2 and fp16 on one GPU, then
# the conversion. Prints sequences/s, tokens/s and peak GPU memory. No network needed: DeepSpeed and
# its missing dependencies are installed from the wheels in .whl/ when that folder exists.
#
#   bash bench/gpu_pretrain_check.sh          # from the repo root; logs go to ${OUT:-/tmp}/
#
# Knobs (environment): STEPS (60), BATCH (16), DEV_SEQUENCES (160), VALID_STEP (40), WORK (/tmp/gpu_pretrain_check), TIME_LIMIT (270 s
# for the training command), WHEELS (.whl), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${OUT:-/tmp}
WORK=${WORK:-/tmp/gpu_pretrain_check}
STEPS=${STEPS:-60}
BATCH=${BATCH:-16}
TIME_LIMIT=${TIME_LIMIT:-270}
PY=${PYTHON:-python3}
mkdir -p "$LOG_DIR" "$WORK"
START_TIME=$(date +%s)

WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=true PYTHONUNBUFFERED=1
"$PY" - <<'PYEOF' 2>&1 | tee "$LOG_DIR/gpu_check_env.log"
import torch, transformers, pytorch_lightning, deepspeed
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
print("transformers", transformers.__version__, "lightning", pytorch_lightning.__version__, "deepspeed", deepspeed.__version__)
PYEOF

"$PY" bench/gpu_pretrain_setup.py --work "$WORK" --dev_sequences "${DEV_SEQUENCES:-160}" 2>&1 | tee "$LOG_DIR/gpu_check_setup.log"
START="$WORK/start/longformer-base-random.bin"
"$PY" save_longformer_ckpt.py --model_name_or_path "$WORK/longformer-base-random" --output "$START" \
    2>&1 | tee "$LOG_DIR/gpu_check_save.log"

rm -rf "$WORK/run"
timeout "$TIME_LIMIT" "$PY" lightning_pretrain.py \
    --model_name_or_path "$WORK/longformer-base-random" --longformer_ckpt "$START" \
    --train_file "$WORK/data/train.json" --dev_file "$WORK/data/dev.json" --item_attr_file "$WORK/data/meta_data.json" \
    --output_dir "$WORK/run" --max_steps "$STEPS" --batch_size "$BATCH" --gradient_accumulation_steps 1 \
    --valid_step "${VALID_STEP:-40}" --log_step 10 --device 1 --fp16 --fix_word_embedding --dataloader_num_workers 4 \
    --no_progress 2>&1 | tee "$LOG_DIR/gpu_check_pretrain.log"

"$PY" convert_pretrain_ckpt.py --lightning_ckpt "$WORK/run/checkpoints/last.ckpt" --longformer_ckpt "$START" \
    --output_dir "$WORK/released" 2>&1 | tee "$LOG_DIR/gpu_check_convert.log"

cp "$WORK/run/train_summary.json" "$LOG_DIR/gpu_check_summary.json"
"$PY" - "$WORK/run/train_summary.json" "$WORK/run/args.json" <<'PYEOF' | tee "$LOG_DIR/gpu_check_result.txt"
import json, sys
s, a = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
print(f"strategy {a['strategy']}, precision {a['precision']}, batch {a['batch_size']}, steps {s['global_step']}, "
      f"timed batches {s['batches_timed']}")
print(f"sequences/s {s['sequences_per_s']:.1f}  tokens/s {s['tokens_per_s']:.0f}  "
      f"peak GPU memory {s.get('peak_gpu_memory_gib', float('nan')):.2f} GiB  best val acc {s['best_val_accuracy']}")
PYEOF
echo "total wall time: $(( $(date +%s) - START_TIME )) s"
