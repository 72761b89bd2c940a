#!/usr/bin/env python
"""Prediction speed and memory, measured side by side in one run (these machines are noisy).

1. Throughput: `unetcli predict` (default options) on 64 membrane-size (512x512) PNGs, whole process from
   files to written masks, against the plain loop a user would write (OpenCV read, normalise, fp32 eager
   model at batch 1, argmax/threshold, write), same model, both as fresh processes.
2. Achieved model GFLOP/s during predict (marginal: the 64-image run minus an 8-image run, so start-up
   is excluded) versus this machine's bf16 convolution peak (a large channels_last conv).
3. bf16 vs fp32: the share of pixels whose class differs (membrane test slices).
4. Peak RSS and wall time for one 8192x8192 RGB image (overlap-tile path).

Usage: python benchmarks/bench_predict.py --model runs/membrane/model-last [--skip-large]
Without --model, a model is trained for --train-minutes on the membrane data first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
MEMBRANE = REPO.parent / "shared" / "datasets" / "membrane"
UNETCLI = [sys.executable, "-m", "unetcli"]

PLAIN_LOOP = r'''
import json, sys, time
from pathlib import Path
import cv2, numpy as np, torch
from safetensors.torch import load_file
import segmentation_models_pytorch as smp
model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
files = sys.argv[3:]
meta = json.loads((model_dir / "unetcli.json").read_text())
config = json.loads((model_dir / "config.json").read_text())
config = {k: v for k, v in config.items() if not k.startswith("_")}
model = smp.Unet(**config)
model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
model.eval()
mean = np.array(meta["pipeline"]["config"]["mean"], np.float32)
std = np.array(meta["pipeline"]["config"]["std"], np.float32)
binary = meta["classes"]["mode"] == "binary"
values = np.array([c["value"] for c in meta["classes"]["classes"]], np.uint8)
out.mkdir(parents=True, exist_ok=True)
with torch.no_grad():
    for f in files:
        image = cv2.imread(f, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
        x = torch.from_numpy((image - mean[0]) / std[0])[None, None]
        logits = model(x)
        ids = (logits[0, 0] > 0).numpy().astype(np.uint8) if binary else logits[0].argmax(0).numpy().astype(np.uint8)
        cv2.imwrite(str(out / Path(f).name), values[ids])
'''


def timed(command: list[str], **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-2000:]}")
    return time.perf_counter() - start, result


def make_inputs(folder: Path, count: int) -> list[Path]:
    """`count` 512x512 gray PNGs: the membrane slices (train and test), repeated."""
    sources = sorted((MEMBRANE / "test" / "images").glob("*.png")) + sorted((MEMBRANE / "images").glob("*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        target = folder / f"slice_{i:03d}.png"
        image = cv2.imread(str(sources[i % len(sources)]), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(target), np.rot90(image, i // len(sources)).copy())
        paths.append(target)
    return paths


def model_gflops(model_dir: Path, size: int = 512) -> float:
    import torch

    from unetcli.checkpoint import load_model_folder

    loaded = load_model_folder(model_dir)
    counter = torch.utils.flop_counter.FlopCounterMode(display=False)
    with counter, torch.no_grad():
        loaded.model(torch.zeros(1, loaded.in_channels, size, size))
    return counter.get_total_flops() / 1e9


def conv_peak_gflops() -> float:
    """bf16 channels_last 3x3 convolution, 256 -> 256 channels, batch 8 at 128x128: achieved GFLOP/s."""
    import torch

    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(8, 256, 128, 128).contiguous(memory_format=torch.channels_last)
    flops = 2 * 8 * 256 * 256 * 9 * 128 * 128
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(3):
            conv(x)
        start = time.perf_counter()
        repeats = 10
        for _ in range(repeats):
            conv(x)
        seconds = time.perf_counter() - start
    return flops * repeats / seconds / 1e9


def class_agreement(model_dir: Path, images: list[Path]) -> float:
    """Share of pixels whose class differs between bf16 and fp32 prediction."""
    from unetcli.images import read_image
    from unetcli.predict import Predictor

    bf16 = Predictor.from_folder(model_dir, precision="bf16")
    fp32 = Predictor.from_folder(model_dir, precision="fp32")
    differ = total = 0
    for path in images:
        image = read_image(path)
        a, b = bf16.predict_image(image), fp32.predict_image(image)
        differ += int((a != b).sum())
        total += a.size
    return differ / total


def peak_rss_of(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child process, via wait4's rusage."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def train_model(folder: Path, minutes: float) -> Path:
    data = folder / "membrane"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True, exist_ok=True)
        for i in range(25):
            (data / sub / f"{i}.png").symlink_to(MEMBRANE / sub / f"{i}.png")
    timed(UNETCLI + ["train", str(data), "-o", str(folder / "run"), "--val-split", "0", "--time-limit", f"{minutes}m", "-q"])
    return folder / "run" / "model-last"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model folder (default: train one on membrane first)")
    parser.add_argument("--train-minutes", type=float, default=3.0)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--skip-large", action="store_true", help="skip the 8192x8192 image")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "predict.json")
    args = parser.parse_args()
    if not MEMBRANE.is_dir():
        raise SystemExit(f"{MEMBRANE}: the membrane data is needed for this benchmark")
    results: dict = {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = args.model or train_model(scratch, args.train_minutes)
        inputs = make_inputs(scratch / "inputs", args.images)
        few = inputs[:8]

        # 1. throughput, side by side
        plain_script = scratch / "plain_loop.py"
        plain_script.write_text(PLAIN_LOOP)
        plain_s, _ = timed([sys.executable, str(plain_script), str(model), str(scratch / "plain")] + [str(p) for p in inputs])
        ours_s, _ = timed(UNETCLI + ["predict", str(model), str(scratch / "inputs"), "-o", str(scratch / "ours"), "-q"])
        few_s, _ = timed(UNETCLI + ["predict", str(model), *map(str, few), "-o", str(scratch / "few"), "-q"])
        results["throughput"] = {
            "images": len(inputs), "unetcli_s": round(ours_s, 2), "plain_loop_s": round(plain_s, 2),
            "unetcli_img_per_s": round(len(inputs) / ours_s, 2), "plain_img_per_s": round(len(inputs) / plain_s, 2),
            "speedup": round(plain_s / ours_s, 2),
        }
        agree = np.mean([(cv2.imread(str(scratch / "ours" / p.name), 0) == cv2.imread(str(scratch / "plain" / p.name), 0)).mean()
                         for p in inputs])
        results["throughput"]["pixels_equal_to_plain_fp32"] = round(float(agree), 5)

        # 2. achieved GFLOP/s against the conv peak
        gflop_per_image = model_gflops(model)
        marginal = (ours_s - few_s) / (len(inputs) - len(few))
        peak = conv_peak_gflops()
        results["gflops"] = {
            "model_gflop_per_512px_image": round(gflop_per_image, 2),
            "achieved_gflops_marginal": round(gflop_per_image / marginal, 1),
            "achieved_gflops_whole_process": round(gflop_per_image * len(inputs) / ours_s, 1),
            "bf16_conv_peak_gflops": round(peak, 1),
            "share_of_peak_marginal": round(gflop_per_image / marginal / peak, 3),
        }

        # 3. bf16 against fp32
        results["bf16_pixels_differing_from_fp32"] = round(class_agreement(model, inputs[:10]), 6)

        # 4. one 8192x8192 RGB image through the overlap-tile path
        if not args.skip_large:
            tile = cv2.imread(str(inputs[0]), cv2.IMREAD_GRAYSCALE)
            big = np.tile(tile, (16, 16))
            big = cv2.merge([big, np.roll(big, 3, 1), np.roll(big, 7, 0)])
            cv2.imwrite(str(scratch / "big.png"), big)
            del big
            seconds, rss = peak_rss_of(UNETCLI + ["predict", str(model), str(scratch / "big.png"), "-o", str(scratch / "big"), "-q"])
            results["large_8192_rgb"] = {"wall_s": round(seconds, 1), "peak_rss_mb": round(rss)}
    results["load_at_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
