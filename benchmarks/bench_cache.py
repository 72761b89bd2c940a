#!/usr/bin/env python
"""Training data larger than memory (issue 15): `train --cache ram|none|disk` side by side on generated RGB pairs.

Generates N RGB 512 x 512 pairs (default 4000, about 3 GB decoded; kept in --data-dir for later runs), then trains
each cache choice in its own process for --seconds (--time-limit, the default configuration without planning,
no validation) and reports per choice: peak RSS (the child's ru_maxrss), the time to the first training step
(reading, and for disk the cache build), and steady images/s (steps between the progress lines after warm-up,
timed by this script as the lines arrive). A second `disk` run reuses the cache (as --resume does).
`auto` under UNETCLI_MEMORY_LIMIT is checked too: it must pick streaming.

Usage: python benchmarks/bench_cache.py [--pairs 4000] [--seconds 240] [--out benchmarks/results/cache.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from bench_planner import cpu_facts
from generated_pairs import write_pairs

REPO = Path(__file__).resolve().parent.parent
STEP = re.compile(r"^epoch \d+/\d+, step (\d+)/\d+, loss [\d.]+, ([\d.]+) images/s")


def make_pairs(folder: Path, count: int, size: int) -> Path:
    """`count` RGB pairs: smooth coloured blobs with noise (PNG-compressible like photos), masks 0/255."""

    def draw(i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(i)
        low = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
        mask = np.zeros((size, size), np.uint8)
        for _ in range(6):
            centre, radius = rng.integers(0, size, 2), int(rng.integers(size // 20, size // 8))
            cv2.circle(mask, (int(centre[0]), int(centre[1])), radius, 255, -1)
        image = np.clip(low.astype(np.int16) + (mask[:, :, None] // 4) + rng.integers(-12, 12, (size, size, 3)), 0, 255)
        return image.astype(np.uint8), mask

    return write_pairs(folder, count, draw, digits=5)


def train_run(data: Path, run: Path, cache: str, seconds: float, env_extra: dict | None = None, extra: tuple = ()) -> dict:
    """One training process: peak RSS, time to the first step, steady images/s, and its `data cache:` line."""
    command = [sys.executable, "-m", "unetcli", "train", str(data), "-o", str(run), "--overwrite", "--no-plan",
               "--val-split", "0", "--epochs", "1", "--samples-per-epoch", "1000000", "--time-limit", str(seconds),
               "--cache", cache, *extra]  # one epoch that the time limit ends
    env = {**os.environ, "UNETCLI_PROGRESS_SECONDS": "2", **(env_extra or {})}
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    steps: list[tuple[float, int, float]] = []  # (arrival, step, the child's seconds since the epoch began)
    cache_line, tail = "", []
    for line in process.stderr:
        now = time.monotonic() - start
        tail = (tail + [line])[-20:]
        if line.startswith("data cache:"):
            cache_line = line.strip()
        match = STEP.match(line)
        if match:
            step, rate = int(match.group(1)), float(match.group(2))
            steps.append((now, step, 8 * step / rate if rate else 0.0))
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{''.join(tail)}")
    steady = [s for s in steps if s[1] >= 3]  # the first steps pay one-off warm-up costs
    rate = None
    if len(steady) >= 2:  # by the child's own clock (its lines may arrive in bursts)
        (_, s0, t0), (_, s1, t1) = steady[0], steady[-1]
        rate = round(8 * (s1 - s0) / (t1 - t0), 3)
    return {"cache": cache, "peak_rss_mb": round(usage.ru_maxrss / 1024), "seconds_to_first_step": round(steps[0][0], 1) if steps else None,
            "images_per_s": rate, "steps": steps[-1][1] if steps else 0, "cache_line": cache_line, "wall_s": round(time.monotonic() - start, 1)}


def crop_costs(data: Path, disk_folder: Path, crops: int = 64) -> dict:
    """Milliseconds per training crop drawn (store lookup, decoding where it streams, augmentation) for each store, in
    this process, one thread: the data side of a step, steadier than whole-run rates on a shared CPU."""
    import random

    from unetcli.cache import DiskStore, RamStore, StreamStore
    from unetcli.crops import CropDataset
    from unetcli.data import find_pairs, resolve_layout
    from unetcli.scan import scan_dataset
    from unetcli.transforms import PipelineConfig, build_train

    pairs = find_pairs(*resolve_layout(data))[:crops]
    scan = scan_dataset(pairs, keep_bytes=float("inf"))
    pipeline = build_train(PipelineConfig(scan.mean, scan.std, 256, "default", 0.3))
    stores = {"ram": RamStore(scan.samples, unit=True), "none": StreamStore(pairs, scan.class_map, scan.in_channels, budget=0)}
    if (disk_folder / "index.json").is_file():
        stores["disk"] = DiskStore(disk_folder, len(pairs))
    order = random.Random(0).sample(range(len(pairs)), len(pairs))
    costs = {}
    for _ in range(3):  # the best of three rounds: the least disturbed by other processes
        for name, store in stores.items():
            dataset = CropDataset(store, pipeline, length=len(pairs))
            start = time.perf_counter()
            for i in order:
                dataset[i]
            cost = round(1000 * (time.perf_counter() - start) / len(order), 1)
            costs[name] = min(costs.get(name, cost), cost)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=240, help="--time-limit of each training run")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/unetcli-bench-cache"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cache.json")
    parser.add_argument("--train-args", default="", help="more train flags, e.g. '--encoder resnet18 --crop 128' (batch stays 8)")
    parser.add_argument("--label", default="", help="a note stored with the results, e.g. 'reduced, CPU shared'")
    args = parser.parse_args()

    started = time.monotonic()
    data = make_pairs(args.data_dir / f"pairs-{args.pairs}-{args.size}", args.pairs, args.size)
    runs = args.data_dir / "runs"
    print(f"data ready in {time.monotonic() - started:.0f} s: {data}", flush=True)
    results = []
    shutil.rmtree(runs / "disk" / "cache", ignore_errors=True)  # the first disk run builds it, the second reuses it
    for cache in ("ram", "none", "disk", "disk"):  # the second disk run reuses the first one's cache
        result = train_run(data, runs / cache, cache, args.seconds, extra=tuple(args.train_args.split()))  # --overwrite keeps RUN/cache: reused if valid
        result["reused_cache"] = "reused from an earlier run" in result["cache_line"]
        results.append(result)
        print(json.dumps(result), flush=True)
    decoded = args.pairs * args.size ** 2 * 4  # RGB image + class-id mask
    limit = f"{max(1, decoded // 2 // 2**20)}M"  # auto may keep a quarter of the decoded set: it must stream
    auto = train_run(data, runs / "auto", "auto", 5, {"UNETCLI_MEMORY_LIMIT": limit})
    ram_rate = results[0]["images_per_s"] or 0
    costs = crop_costs(data, runs / "disk" / "cache" / "train")
    report = {
        "label": args.label, "pairs": args.pairs, "size": args.size, "decoded_gb": round(decoded / 2**30, 2),
        "train_seconds_each": args.seconds, "machine": {**cpu_facts(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "precision": "auto (bf16 where the CPU has it)", "config": "resnet34, crop 256, batch 8, default augmentation, --no-plan " + args.train_args,
        "runs": results,
        "rate_vs_ram": {r["cache"] + (" (reused)" if r["reused_cache"] else ""): round((r["images_per_s"] or 0) / ram_rate, 3)
                        for r in results[1:]} if ram_rate else {},
        "ms_per_crop_drawn": costs,
        "auto_under_limit": {"UNETCLI_MEMORY_LIMIT": limit, "line": auto["cache_line"]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
