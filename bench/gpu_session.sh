#!/usr/bin/env bash
# Every GPU check of the project in one go (for a machine lent for a few minutes):
#   1. the CUDA tests (tests/test_gpu.py and the CUDA cases of tests/test_attention.py, skipped on CPU machines)
#   2. throughput at longformer-base size, bf16, eager against sdpa and flex_attention: 4,000 items,
#      finetuning and pretraining steps at batch 16 over histories of up to 1,024 tokens
#      (bench/bench_throughput.py; JSON in $OUT/gpu_throughput.json)
#   3. item-table encoding speed at longformer-base size (bench/bench_item_encoding.py)
#   4. the pretraining check: ZeRO-2 + fp16 through lightning_pretrain.py, then the conversion
#      (bench/gpu_pretrain_check.sh)
# Logs go to ${OUT:-/tmp}/. Each part runs even when an earlier one fails; the exit code is the worst.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${OUT:-/tmp}
mkdir -p "$LOG_DIR"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOG_DIR/gpu_name.txt"
status=0
echo "== CUDA tests"
"$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_attention.py 2>&1 | tail -n 15 | tee "$LOG_DIR/gpu_tests.log" || status=1
echo "== throughput: eager vs sdpa vs flex_attention, longformer-base, bf16"
timeout "${THROUGHPUT_TIMEOUT:-420}" "$PY" bench/bench_throughput.py --device cuda --size base --items 4000 --batch 16 --parts items finetune pretrain budget \
    --lengths 1024 --steps 10 --repeats "${REPEATS:-2}" --output "$LOG_DIR/gpu_throughput.json" \
    2> "$LOG_DIR/gpu_throughput.log" | tail -n 80 || status=1
tail -n 5 "$LOG_DIR/gpu_throughput.log"
echo "== item encoding, longformer-base size"
"$PY" bench/bench_item_encoding.py --size base --items 4000 --device cuda 2>&1 | tail -n 6 | tee "$LOG_DIR/gpu_encoding.log" || status=1
echo "== pretraining check"
WHEELS=/nonexistent bash bench/gpu_pretrain_check.sh > "$LOG_DIR/gpu_pretrain.log" 2>&1 || status=1
tail -n 25 "$LOG_DIR/gpu_pretrain.log"
exit $status
