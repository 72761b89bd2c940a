#!/bin/bash
# Second GPU session: the GPU busy enough to show what AMP does (batch 8 of 256-px crops is launch-bound on an
# H100/H200: unetcli 345 img/s against 417 for the plain fp32 loop): 32 crops of 512 px, and 1024 images to predict.
set -u
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
timeout 150 python3 benchmarks/bench_train.py --device cuda --epochs 3 --samples 2048 --batch-size 32 --crop 512 --plain-steps 40 --out "$OUT/train_cuda_b32.json" > "$OUT/train2.log" 2>&1; echo "bench_train rc $?"
timeout 200 python3 benchmarks/bench_predict.py --device cuda --train-minutes 0.5 --images 1024 --parts throughput --out "$OUT/predict_cuda_1024.json" > "$OUT/predict2.log" 2>&1; echo "bench_predict rc $?"
cat "$OUT"/*.json; tail -5 "$OUT"/*.log
