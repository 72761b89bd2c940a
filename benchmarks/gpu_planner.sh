#!/bin/bash
# One prepared GPU run for the planner (issue 12, item 5): what it plans on a GPU (AMP, the grown batch, the
# measured crops/s per candidate), the planner tests on CUDA, and membrane time to quality: planner against the
# fixed defaults at 2 minutes, the planner alone at 5 (both at 5 would pass a 10-minute call). About 9 minutes.
# Expects the membrane data beside the repository (../shared/datasets/membrane) and unetcli importable.
set -u
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/gpu.txt"
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from membrane import link_slices; from pathlib import Path; link_slices(Path('/tmp/gpu-train'))"  # slices 0-24, links (kept out of $OUT)
for minutes in 2 5; do
  timeout 120 python3 -m unetcli plan /tmp/gpu-train --val-split 0 --time-limit ${minutes}m --json > "$OUT/plan_${minutes}m.json" 2> "$OUT/plan_${minutes}m.log"
  echo "plan ${minutes}m rc $?"
done
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_planner.py > "$OUT/tests.log" 2>&1; echo "tests rc $?"
timeout 330 python3 benchmarks/bench_planner.py --minutes 2 --seeds 0 --configs planner defaults --workdir /tmp/ubp-gpu \
  --out "$OUT/planner_gpu_2m.json" > "$OUT/bench_2m.log" 2>&1; echo "bench 2m rc $?"
timeout 360 python3 benchmarks/bench_planner.py --minutes 5 --seeds 0 --configs planner --workdir /tmp/ubp-gpu \
  --out "$OUT/planner_gpu_5m.json" > "$OUT/bench_5m.log" 2>&1; echo "bench 5m rc $?"
tail -3 "$OUT/tests.log"; tail -4 "$OUT"/bench_*.log
python3 -c "import json, sys; [print(f, (p := json.load(open(f)))['choices'], p['reasons']['batch_size'], p['throughput']) for f in sys.argv[1:]]" "$OUT"/plan_*.json
