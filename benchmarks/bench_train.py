#!/usr/bin/env python
"""Training throughput, measured side by side in one run.

`unetcli train` with default options (bf16 autocast + channels_last where the CPU has native bf16, random
256-pixel crops, default augmentation, batch 8, resnet34) against the plain loop a user would write: the
same model, the same 256-pixel crops and loss, fp32 eager, contiguous memory. On CPU also `unetcli train
--precision fp32`, what CPUs without native bf16 get. Images/s are taken from steady-state epochs (the first
epoch is left out: it includes one-off warm-up costs). On CPU it also profiles one default step of the same model and reports its convolutions' own time: the
images/s of a step that did nothing but its convolutions bounds what any implementation could reach.

Usage: python benchmarks/bench_train.py [--epochs 3] [--samples 128] [--device cuda]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from membrane import MEMBRANE, link_slices

REPO = Path(__file__).resolve().parent.parent

PLAIN_LOOP = r'''
import sys, time
import cv2, numpy as np, torch
import segmentation_models_pytorch as smp
steps, batch, device, crop, files = int(sys.argv[1]), int(sys.argv[2]), torch.device(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
images = [cv2.imread(f, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0 for f in files]
masks = [(cv2.imread(f.replace("/images/", "/masks/"), cv2.IMREAD_GRAYSCALE) > 0).astype(np.float32) for f in files]
model = smp.Unet("resnet34", encoder_weights=None, in_channels=1, classes=1).to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
dice, bce = smp.losses.DiceLoss("binary"), torch.nn.BCEWithLogitsLoss()
rng = np.random.default_rng(0)
times = []
for step in range(steps):
    xs, ys = [], []
    for _ in range(batch):
        i = rng.integers(len(images)); r, c = rng.integers(0, 512 - crop + 1, 2)
        xs.append(images[i][r:r + crop, c:c + crop]); ys.append(masks[i][r:r + crop, c:c + crop])
    x = torch.from_numpy((np.stack(xs)[:, None] - 0.5) / 0.2).to(device); y = torch.from_numpy(np.stack(ys)[:, None]).to(device)
    start = time.perf_counter()
    logits = model(x)
    loss = dice(logits, y) + bce(logits, y)
    optimizer.zero_grad(); loss.backward(); optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - start)
steady = times[2:]
print(batch * len(steady) / sum(steady))
'''


def steady_rate(run: Path, samples: int) -> float:
    """Images/s over a run's epochs after the first (which includes one-off warm-up costs)."""
    with open(run / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    steady = rows[1:] or rows
    return samples * len(steady) / sum(float(r["seconds"]) for r in steady)


def convolution_floor(batch: int, crop: int, steps: int = 3) -> dict:
    """CPU only: one default step (bf16 autocast, channels_last) of the same model on random data, profiled.
    Returns its convolutions' own time (forward + backward) per step and the images/s of a step that did
    nothing else: no implementation of this model at this precision can train faster on this machine."""
    import segmentation_models_pytorch as smp
    import torch
    from torch.profiler import ProfilerActivity, profile

    model = smp.Unet("resnet34", encoder_weights=None, in_channels=1, classes=1).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(batch, 1, crop, crop).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, crop, crop) > 0.5).float()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        for _ in range(steps):
            step()
    events = profiled.key_averages()
    conv_us = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward"))
    step_us = sum(e.self_cpu_time_total for e in events)
    conv_s = conv_us / 1e6 / steps
    return {"conv_s_per_step": round(conv_s, 3), "profiled_step_s": round(step_us / 1e6 / steps, 3),
            "conv_share_of_step": round(conv_us / step_us, 3), "conv_only_img_per_s": round(batch / conv_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=128, help="crops per epoch for unetcli")
    parser.add_argument("--plain-steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8, help="for both (unetcli's default: 8)")
    parser.add_argument("--crop", type=int, default=256, help="for both (unetcli's default: 256; at most 512)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: unetcli with AMP against the plain fp32 loop on the GPU")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train.json")
    args = parser.parse_args()
    if not MEMBRANE.is_dir():
        raise SystemExit(f"{MEMBRANE}: the membrane data is needed for this benchmark")
    results: dict = {"cpus": os.cpu_count(), "device": args.device, "batch_size": args.batch_size, "crop": args.crop,
                     "load_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as scratch:
        data = link_slices(Path(scratch) / "membrane")

        def unetcli_rate(name: str, *extra: str) -> float:
            """`unetcli train` into scratch/name; its steady-state images/s."""
            subprocess.run([sys.executable, "-m", "unetcli", "train", str(data), "-o", f"{scratch}/{name}", "--val-split", "0",
                            "--epochs", str(args.epochs), "--samples-per-epoch", str(args.samples), "--device", args.device,
                            "--batch-size", str(args.batch_size), "--crop", str(args.crop), "-q", *extra], check=True)
            return steady_rate(Path(scratch) / name, args.samples)

        start = time.perf_counter()
        ours = unetcli_rate("run")
        results["unetcli_wall_s"] = round(time.perf_counter() - start, 1)
        if args.device == "cpu":  # what CPUs without native bf16 get: fp32, channels_last
            fp32 = unetcli_rate("run-fp32", "--precision", "fp32")
        script = Path(scratch) / "plain.py"
        script.write_text(PLAIN_LOOP)
        plain = subprocess.run([sys.executable, str(script), str(args.plain_steps), str(args.batch_size), args.device, str(args.crop),
                                *(str(data / "images" / f"{i}.png") for i in range(25))],
                               check=True, capture_output=True, text=True)
        plain_rate = float(plain.stdout.strip().splitlines()[-1])
    results.update({"unetcli_img_per_s": round(ours, 2), "plain_fp32_img_per_s": round(plain_rate, 2),
                    "speedup": round(ours / plain_rate, 2)})
    if args.device == "cpu":
        results.update({"unetcli_fp32_img_per_s": round(fp32, 2), "speedup_fp32": round(fp32 / plain_rate, 2)})
        floor = convolution_floor(args.batch_size, args.crop)
        floor["conv_only_speedup"] = round(floor["conv_only_img_per_s"] / plain_rate, 2)
        results["convolution_floor"] = floor
    results["load_at_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
