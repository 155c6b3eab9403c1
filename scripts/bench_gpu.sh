#!/usr/bin/env bash
# The device benchmark, ready for a lent GPU (issue 10): layer table and model table (train + eval) on the
# accelerator, with the per-backend conv choice (auto = grouped convolutions on GPU) beside the unrolled form,
# and bfloat16 compute where the precision policy provides it. Writes JSON under ${OUT:-experiments/results/gpu}.
#   bash scripts/bench_gpu.sh            # paper size (a few minutes on a GPU)
#   bash scripts/bench_gpu.sh tiny       # smoke run (the test suite runs this on CPU)
# On the device machine: pip install -r requirements.txt -r requirements-gpu.txt first (no torch needed).
set -euo pipefail
SIZE="${1:-paper}"
DEST="${OUT:-experiments/results/gpu}"
mkdir -p "$DEST"
PY="${PYTHON:-python}"
if [ "$SIZE" = "paper" ]; then
  ROUNDS=5; LAYERS=""; RUNS=""
else  # smoke run: one tiny layer, the JAA-Net eval forward only
  ROUNDS=1; LAYERS="--layers cells_l1_2x2 --tiny"; RUNS="--models jaanet --modes eval --eval-batch-sizes 2"
fi
"$PY" -c "import jax; print('backend', jax.default_backend(), jax.devices())"
"$PY" -m experiments.bench_layers --no-torch --rounds "$ROUNDS" $LAYERS --out "$DEST/bench_layers_$SIZE.json"
for impl in auto unrolled; do
  "$PY" -m experiments.bench_train --no-torch --no-rss --sizes "$SIZE" --rounds "$ROUNDS" --conv-impl "$impl" \
    $RUNS --out "$DEST/bench_train_${SIZE}_${impl}.json"
done
"$PY" -m experiments.bench_train --no-torch --no-rss --sizes "$SIZE" --rounds "$ROUNDS" --dtype bfloat16 $RUNS \
  --out "$DEST/bench_train_${SIZE}_bf16.json"
