#!/usr/bin/env bash
# The device benchmark, ready for a lent GPU (issue 10): the model table (train + eval) with the per-backend conv
# choice (auto = grouped convolutions on GPU) and the PyTorch JAA-Net baseline on the same GPU when torch sees one,
# then bfloat16 compute (precision policy), the unrolled form, and the layer table. Writes JSON under
# ${OUT:-experiments/results/gpu}, most important first (a run cut short keeps what it finished).
#   bash scripts/bench_gpu.sh            # paper size (a few minutes on a GPU)
#   bash scripts/bench_gpu.sh tiny       # smoke run (the test suite runs this on CPU)
# On a GPU machine: pip install -r requirements.txt -r requirements-gpu.txt first (torch with CUDA is optional).
set -euo pipefail
SIZE="${1:-paper}"
DEST="${OUT:-experiments/results/gpu}"
mkdir -p "$DEST"
PY="${PYTHON:-python}"
if [ "$SIZE" = "paper" ]; then
  ROUNDS=10; LAYERS=""; RUNS=""
else  # smoke run: one tiny layer, the JAA-Net eval forward only
  ROUNDS=1; LAYERS="--layers cells_l1_2x2 --tiny"; RUNS="--models jaanet --modes eval --eval-batch-sizes 2"
fi
"$PY" -c "import jax; print('backend', jax.default_backend(), jax.devices())"
# PyTorch beside JAX only where it runs on the same accelerator (a CPU baseline next to a GPU is no comparison).
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  TORCH="--torch-device cuda"
else
  TORCH="--no-torch"
fi
"$PY" -m experiments.bench_train $TORCH --no-rss --sizes "$SIZE" --rounds "$ROUNDS" --conv-impl auto \
  $RUNS --out "$DEST/bench_train_${SIZE}_auto.json"
"$PY" -m experiments.bench_train --no-torch --no-rss --sizes "$SIZE" --rounds "$ROUNDS" --dtype bfloat16 $RUNS \
  --out "$DEST/bench_train_${SIZE}_bf16.json"
"$PY" -m experiments.bench_train --no-torch --no-rss --sizes "$SIZE" --rounds "$ROUNDS" --conv-impl unrolled \
  $RUNS --out "$DEST/bench_train_${SIZE}_unrolled.json"
"$PY" -m experiments.bench_layers --no-torch --rounds "$ROUNDS" $LAYERS --out "$DEST/bench_layers_$SIZE.json"
