#!/bin/bash
# One prepared GPU session: training and prediction benchmarks on CUDA (unetcli with AMP against the plain
# fp32 loops, side by side) and the CLI tests with device auto (= the GPU). Figures and logs go to $OUT.
# Expects the membrane data beside the repository (../shared/datasets/membrane) and unetcli importable.
set -u
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/gpu.txt"
python3 -c "import torch, segmentation_models_pytorch as smp, albumentations as A; print('torch', torch.__version__, 'smp', smp.__version__, 'albumentations', A.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
timeout 150 python3 benchmarks/bench_train.py --device cuda --epochs 3 --samples 1024 --plain-steps 60 --out "$OUT/train_cuda.json" > "$OUT/train.log" 2>&1; echo "bench_train rc $?"
timeout 240 python3 benchmarks/bench_predict.py --device cuda --train-minutes 1 --parts throughput,bf16,large,tiling --out "$OUT/predict_cuda.json" > "$OUT/predict.log" 2>&1; echo "bench_predict rc $?"
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_cli.py tests/test_end_to_end.py tests/test_prediction_sizes.py tests/test_training_faults.py > "$OUT/tests.log" 2>&1; echo "tests rc $?"
tail -3 "$OUT/tests.log"; cat "$OUT"/*.json
