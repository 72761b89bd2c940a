#!/usr/bin/env python
"""Huge folders (issue 15): N pairs of 64 x 64 PNGs (default 100,000), and how long `check` takes, how long `train`
takes to its first step, and `predict` to its first written mask.

Each command runs in its own process, timed from its start by this script: `check --json` to its end; `train`
(plain progress lines, timed as they arrive) to the first `epoch 1/1, step 1/` line, then stopped; `predict` on the
images folder to the first mask file in OUT, then stopped. The model for predict is a tiny one trained here on 16
of the pairs. Data is kept in --data-dir for later runs.

Usage: python benchmarks/bench_huge_folder.py [--pairs 100000] [--out benchmarks/results/huge_folder.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_planner import cpu_facts
from generated_pairs import write_pairs

REPO = Path(__file__).resolve().parent.parent
TINY = ["--encoder", "resnet18", "--decoder-width", "128", "--crop", "64", "--batch-size", "8", "--no-plan", "--epochs", "1"]


def make_pairs(folder: Path, count: int) -> Path:
    """`count` gray 64 x 64 pairs: a 24 px square, brighter than the noise around it."""

    def draw(i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(i)
        y, x = rng.integers(0, 40, 2)
        mask = np.zeros((64, 64), np.uint8)
        mask[y:y + 24, x:x + 24] = 255
        return (rng.integers(0, 80, (64, 64)) + mask // 2).astype(np.uint8), mask

    return write_pairs(folder, count, draw)


def unetcli(*args) -> list[str]:
    return [sys.executable, "-m", "unetcli", *map(str, args)]


def time_check(data: Path) -> dict:
    start = time.monotonic()
    done = subprocess.run(unetcli("check", data, "--json"), check=False, capture_output=True, text=True, cwd=REPO)
    seconds = time.monotonic() - start
    report = json.loads(done.stdout) if done.returncode == 0 else {}
    return {"seconds": round(seconds, 1), "pairs": report.get("pairs"), "exit_code": done.returncode}


def time_first_step(data: Path, run: Path) -> dict:
    """Seconds to the first training step, and to the end of the reading lines, from plain progress lines."""
    env = {**os.environ, "UNETCLI_PROGRESS_SECONDS": "1"}
    start = time.monotonic()
    process = subprocess.Popen(unetcli("train", data, "-o", run, "--overwrite", *TINY), stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    marks, tail = {}, []
    for line in process.stderr:
        now = round(time.monotonic() - start, 1)
        tail.append(line)
        if line.startswith("reading data:") and "pairs" in line:
            marks.setdefault("reading_lines", []).append([now, line.strip()])
        if line.startswith("data cache:"):
            marks["data_ready_s"], marks["cache_line"] = now, line.strip()
        if line.startswith("epoch 1/1, step "):
            marks["first_step_s"] = now
            break
    process.kill()
    process.wait()
    if "first_step_s" not in marks:
        raise SystemExit("train did not reach a step:\n" + "".join(tail[-20:]))
    marks["reading_lines"] = marks.get("reading_lines", [])[-4:]  # the last ones (train and validation ends)
    return marks


def time_first_prediction(model: Path, images: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    start = time.monotonic()
    process = subprocess.Popen(unetcli("predict", model, images, "-o", out, "--quiet"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, cwd=REPO)
    first = None
    while process.poll() is None and first is None:
        if out.is_dir() and any(e.name.endswith(".png") and not e.name.startswith(".") for e in os.scandir(out)):
            first = time.monotonic() - start
        time.sleep(0.05)
    process.kill()
    process.wait()
    if first is None:
        raise SystemExit("predict wrote nothing:\n" + process.stderr.read().decode()[-2000:])
    return {"first_output_s": round(first, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/unetcli-bench-huge"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "huge_folder.json")
    parser.add_argument("--label", default="", help="a note stored with the results, e.g. 'reduced, CPU shared'")
    args = parser.parse_args()

    started = time.monotonic()
    data = make_pairs(args.data_dir / f"pairs-{args.pairs}", args.pairs)
    print(f"data ready in {time.monotonic() - started:.0f} s: {data}", flush=True)
    small = args.data_dir / "small"
    if not (small / "model" / "model-best").is_dir():
        for sub in ("images", "masks"):
            (small / "data" / sub).mkdir(parents=True, exist_ok=True)
            for i in range(16):
                shutil.copy(data / sub / f"{i:06d}.png", small / "data" / sub)
        subprocess.run(unetcli("train", small / "data", "-o", small / "model", "--overwrite", "--samples-per-epoch", "16",
                               "--quiet", *TINY), check=True, cwd=REPO)
    report = {"label": args.label, "pairs": args.pairs, "files": 2 * args.pairs,
              "machine": {**cpu_facts(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()}}
    report["check"] = time_check(data)
    print(json.dumps(report["check"]), flush=True)
    report["train"] = time_first_step(data, args.data_dir / "run")
    print(json.dumps(report["train"]), flush=True)
    report["predict"] = time_first_prediction(small / "model" / "model-best", data / "images", args.data_dir / "pred")
    print(json.dumps(report["predict"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
