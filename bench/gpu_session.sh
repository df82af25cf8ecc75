#!/usr/bin/env bash
# Every GPU check of the project in one go, sized for a machine lent for about ten minutes. Parts, in
# order of what matters most, each under its own time limit so that one slow part cannot starve the rest:
#   1. throughput at longformer-base size, bf16: eager against sdpa and flex_attention (padded and packed
#      finetuning batches, pretraining with a pass per side, in one pass and packed, sdpa compiled), 4,000 items
#      encoded, token budgets (bench/bench_throughput.py; JSON in $OUT/gpu_throughput.json, rewritten after every case)
#   2. the CUDA tests (tests/test_gpu.py, the CUDA cases of tests/test_attention.py and
#      tests/test_packed_training.py; skipped on CPU machines)
#   3. the pretraining check: ZeRO-2 + fp16 through lightning_pretrain.py, then the conversion
#      (bench/gpu_pretrain_check.sh)
# Python packages the machine lacks travel as wheels in .whl/ (installed into /tmp/site first).
# Logs go to ${OUT:-/tmp}/. Each part runs even when an earlier one fails; the exit code is the worst.
#   Knobs: THROUGHPUT_TIMEOUT (300 s), TESTS_TIMEOUT (170 s), PRETRAIN_TIMEOUT (130 s; 0 skips the check),
#   REPEATS (1), PYTHON.
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
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$LOG_DIR/gpu_name.txt"
status=0
echo "== throughput: eager vs sdpa vs flex_attention, longformer-base, bf16"
timeout "${THROUGHPUT_TIMEOUT:-300}" "$PY" bench/bench_throughput.py --device cuda --size base --items 4000 --batch 16 \
    --parts items finetune pretrain budget --lengths 1024 --steps 10 --repeats "${REPEATS:-1}" \
    --output "$LOG_DIR/gpu_throughput.json" > /dev/null 2> "$LOG_DIR/gpu_throughput.log" || status=1
grep -v Warning "$LOG_DIR/gpu_throughput.log" | tail -n 30
echo "== CUDA tests"
timeout "${TESTS_TIMEOUT:-170}" "$PY" -m pytest -q -p no:cacheprovider -rfs --tb=short --show-capture=no tests/test_gpu.py \
    tests/test_attention.py tests/test_packed_training.py > "$LOG_DIR/gpu_tests.log" 2>&1 || status=1
grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" "$LOG_DIR/gpu_tests.log" | tail -n 25
if [ "${PRETRAIN_TIMEOUT:-130}" -gt 0 ]; then
    echo "== pretraining check"
    timeout "${PRETRAIN_TIMEOUT:-130}" env WHEELS=/nonexistent STEPS="${STEPS:-40}" VALID_STEP="${VALID_STEP:-40}" \
        TIME_LIMIT="${TIME_LIMIT:-100}" bash bench/gpu_pretrain_check.sh > "$LOG_DIR/gpu_pretrain.log" 2>&1 || status=1
    tail -n 12 "$LOG_DIR/gpu_pretrain.log"
fi
exit $status
