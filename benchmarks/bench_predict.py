#!/usr/bin/env python
"""Prediction speed and memory, measured side by side in one run (these machines are noisy).

1. Throughput: `unetcli predict` (default options) on 64 membrane-size (512x512) PNGs, whole process from
   files to written masks, against the plain loop a user would write (OpenCV read, normalise, fp32 eager
   model at batch 1, argmax/threshold, write), same model, both as fresh processes; and per extra image
   (the 64-image run minus an 8-image run, for both), which leaves out the start-up both pay; and the same
   for `--precision fp32`, what CPUs without native bf16 get.
2. Achieved model GFLOP/s during predict (marginal: the 64-image run minus an 8-image run, so start-up
   is excluded) versus this machine's bf16 convolution peak (a large channels_last conv).
3. bf16 vs fp32: the share of pixels whose class differs (membrane test slices).
4. Peak RSS and wall time for one 8192x8192 RGB image (overlap-tile path).
5. --compile (torch.compile) against eager: steady-state images/s on membrane slices at the default
   precision, the one-off compile time, and the share of pixels whose class differs from eager.
6. Tiled against whole-image prediction (fp32) on a 2048x2048 mosaic of membrane test slices: the share of
   equal pixels with the model's default tiles (auto) and with 512-pixel tiles.

Usage: python benchmarks/bench_predict.py --model runs/membrane/model-last [--parts large,compile] [--skip-large]
Without --model, a model is trained for --train-minutes on the membrane data first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from membrane import MEMBRANE, link_slices

REPO = Path(__file__).resolve().parent.parent
UNETCLI = [sys.executable, "-m", "unetcli"]

PLAIN_LOOP = r'''
import json, sys, time
from pathlib import Path
import cv2, numpy as np, torch
from safetensors.torch import load_file
import segmentation_models_pytorch as smp
model_dir, out, device = Path(sys.argv[1]), Path(sys.argv[2]), torch.device(sys.argv[3])
files = sys.argv[4:]
meta = json.loads((model_dir / "unetcli.json").read_text())
config = json.loads((model_dir / "config.json").read_text())
config = {k: v for k, v in config.items() if not k.startswith("_")}
model = smp.Unet(**config)
model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
model.eval().to(device)
mean = np.array(meta["pipeline"]["config"]["mean"], np.float32)
std = np.array(meta["pipeline"]["config"]["std"], np.float32)
binary = meta["classes"]["mode"] == "binary"
values = np.array([c["value"] for c in meta["classes"]["classes"]], np.uint8)
out.mkdir(parents=True, exist_ok=True)
with torch.no_grad():
    for f in files:
        image = cv2.imread(f, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
        x = torch.from_numpy((image - mean[0]) / std[0])[None, None].to(device)
        logits = model(x).cpu()
        ids = (logits[0, 0] > 0).numpy().astype(np.uint8) if binary else logits[0].argmax(0).numpy().astype(np.uint8)
        cv2.imwrite(str(out / Path(f).name), values[ids])
'''


PARTS = ("throughput", "bf16", "large", "compile", "tiling")  # throughput includes the GFLOP/s figures


def timed(command: list[str], **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
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
    import torch.utils.flop_counter

    from unetcli.checkpoint import load_model_folder

    loaded = load_model_folder(model_dir)
    counter = torch.utils.flop_counter.FlopCounterMode(display=False)
    with counter, torch.no_grad():
        loaded.model(torch.zeros(1, loaded.in_channels, size, size))
    return counter.get_total_flops() / 1e9


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def conv_peak_gflops(device: str = "cpu") -> float:
    """This machine's bf16 convolution peak: the best GFLOP/s of large channels_last 3x3 convolutions run in
    bf16 directly (weights and input already bf16, so no autocast casts count against the peak)."""
    import torch

    best = 0.0
    for channels, size in ((128, 256), (256, 128), (512, 64)):
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device, torch.bfloat16, memory_format=torch.channels_last)
        x = torch.randn(8, channels, size, size, device=device).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        flops = 2 * 8 * channels * channels * 9 * size * size
        with torch.inference_mode():
            for _ in range(3):
                conv(x)
            synchronize(device)
            start = time.perf_counter()
            repeats = 10 if device == "cpu" else 200
            for _ in range(repeats):
                conv(x)
            synchronize(device)
            best = max(best, flops * repeats / (time.perf_counter() - start) / 1e9)
    return best


def class_agreement(model_dir: Path, images: list[Path], device: str) -> float:
    """Share of pixels whose class differs between bf16 and fp32 prediction."""
    from unetcli.images import read_image
    from unetcli.predictor import Predictor

    bf16 = Predictor.from_folder(model_dir, device, precision="bf16")
    fp32 = Predictor.from_folder(model_dir, device, precision="fp32")
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


def compile_against_eager(model_dir: Path, images: list[Path], device: str, batch_size: int = 1) -> dict:
    """In one process: eager and compiled Predictors at the default precision on the same decoded slices, each
    warmed up on one batch first (the compiled one's warm-up is the compile), then timed over all of them."""
    from unetcli.images import read_image
    from unetcli.predictor import Predictor

    decoded = [read_image(path) for path in images]
    batches = [decoded[i: i + batch_size] for i in range(0, len(decoded), batch_size)]
    figures: dict = {}
    masks = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        predictor = Predictor.from_folder(model_dir, device, compile_model=compiled, batch_size=batch_size)
        start = time.perf_counter()
        predictor.predict_batch(batches[0])
        figures[f"{name}_first_batch_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        masks[name] = np.concatenate([predictor.predict_batch(batch) for batch in batches])
        figures[f"{name}_img_per_s"] = round(len(decoded) / (time.perf_counter() - start), 2)
        if compiled and predictor.compiled is None:
            figures["compile_failed"] = True
        figures["precision"] = predictor.precision.name
    figures["speedup"] = round(figures["compiled_img_per_s"] / figures["eager_img_per_s"], 2)
    figures["pixels_differing_from_eager"] = round(float(np.mean(masks["eager"] != masks["compiled"])), 6)
    return figures


def tiled_against_whole(model_dir: Path, device: str, size: int = 2048) -> dict:
    """fp32 whole-image prediction of a size x size mosaic of test slices (mirrored so edges continue) against
    the model's default tiles and 512-pixel tiles: the share of pixels with the same class."""
    from unetcli.predictor import Predictor

    slices = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((MEMBRANE / "test" / "images").glob("*.png"))]
    rows = []
    for r in range(-(-size // 512)):
        blocks = [slices[(r * 7 + c) % len(slices)] for c in range(-(-size // 512))]
        rows.append(np.concatenate([b[::-1 if r % 2 else 1, ::-1 if c % 2 else 1] for c, b in enumerate(blocks)], axis=1))
    image = np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size, None])
    start = time.perf_counter()
    whole = Predictor.from_folder(model_dir, device, precision="fp32", tile="off").predict_image(image)
    figures = {"size": size, "whole_s": round(time.perf_counter() - start, 1)}
    for tile, overlap in (("auto", None), ("512", None), ("512", 0.5)):
        predictor = Predictor.from_folder(model_dir, device, precision="fp32", tile=tile, overlap=overlap)
        start = time.perf_counter()
        tiled = predictor.predict_image(image)
        name = f"tile_{predictor.tile}_overlap_{predictor.overlap}"
        figures[f"{name}_s"] = round(time.perf_counter() - start, 1)
        figures[f"{name}_pixels_equal"] = round(float(np.mean(tiled == whole)), 6)
    return figures


def train_model(folder: Path, minutes: float) -> Path:
    data = link_slices(folder / "membrane")
    timed(UNETCLI + ["train", str(data), "-o", str(folder / "run"), "--val-split", "0", "--time-limit", f"{minutes}m", "-q"])
    return folder / "run" / "model-last"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model folder (default: train one on membrane first)")
    parser.add_argument("--train-minutes", type=float, default=3.0)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--skip-large", action="store_true", help="skip the 8192x8192 image")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--compile-images", type=int, default=32, help="membrane slices for the compile comparison")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "predict.json")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: unetcli (AMP) and the plain fp32 loop on the GPU")
    args = parser.parse_args()
    if not MEMBRANE.is_dir():
        raise SystemExit(f"{MEMBRANE}: the membrane data is needed for this benchmark")
    results: dict = {"cpus": os.cpu_count(), "device": args.device, "load_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = args.model or train_model(scratch, args.train_minutes)
        inputs = make_inputs(scratch / "inputs", args.images)
        few = inputs[:8]

        parts = {part.strip() for part in args.parts.split(",") if part.strip()}
        if parts - set(PARTS):
            raise SystemExit(f"--parts: unknown {', '.join(sorted(parts - set(PARTS)))}; choose from {', '.join(PARTS)}")
        if args.skip_large:
            parts.discard("large")
        results["model"] = Path(args.model).name if args.model else f"trained for {args.train_minutes} min"  # no local paths

        # 1. throughput, side by side
        if "throughput" in parts:
            plain_script = scratch / "plain_loop.py"
            plain_script.write_text(PLAIN_LOOP)

            def plain_loop(images: list[Path], out: str) -> float:
                return timed([sys.executable, str(plain_script), str(model), str(scratch / out), args.device, *map(str, images)])[0]

            def unetcli(images: list[Path], out: str, *extra: str) -> float:
                return timed(UNETCLI + ["predict", str(model), *map(str, images), "-o", str(scratch / out), "-q", "--device", args.device, *extra])[0]

            def per_image(all_s: float, few_s: float) -> float:
                return (all_s - few_s) / (len(inputs) - len(few))

            plain_s = plain_loop(inputs, "plain")
            ours_s = unetcli([scratch / "inputs"], "ours")
            plain_few_s = plain_loop(few, "plain_few")
            few_s = unetcli(few, "few")
            fp32 = ("--precision", "fp32")  # what CPUs without native bf16 get (channels_last, folded BatchNorm)
            fp32_s = unetcli([scratch / "inputs"], "fp32", *fp32)
            fp32_few_s = unetcli(few, "fp32_few", *fp32)
            marginal, plain_marginal, fp32_marginal = per_image(ours_s, few_s), per_image(plain_s, plain_few_s), per_image(fp32_s, fp32_few_s)
            results["throughput"] = {
                "images": len(inputs), "unetcli_s": round(ours_s, 2), "plain_loop_s": round(plain_s, 2),
                "unetcli_img_per_s": round(len(inputs) / ours_s, 2), "plain_img_per_s": round(len(inputs) / plain_s, 2),
                "speedup": round(plain_s / ours_s, 2),
                # per extra image, start-up (imports, model load: ~4 s for both) excluded
                "unetcli_s_per_image_marginal": round(marginal, 3), "plain_s_per_image_marginal": round(plain_marginal, 3),
                "speedup_marginal": round(plain_marginal / marginal, 2),
                "unetcli_fp32_s": round(fp32_s, 2), "speedup_fp32": round(plain_s / fp32_s, 2),
                "unetcli_fp32_s_per_image_marginal": round(fp32_marginal, 3), "speedup_fp32_marginal": round(plain_marginal / fp32_marginal, 2),
                "unetcli_startup_s": round(few_s - len(few) * marginal, 2),
                "plain_startup_s": round(plain_few_s - len(few) * plain_marginal, 2),
            }
            agree = np.mean([(cv2.imread(str(scratch / "ours" / p.name), 0) == cv2.imread(str(scratch / "plain" / p.name), 0)).mean()
                             for p in inputs])
            results["throughput"]["pixels_equal_to_plain_fp32"] = round(float(agree), 5)

            # 2. achieved GFLOP/s against the conv peak
            gflop_per_image = model_gflops(model)
            peak = conv_peak_gflops(args.device)
            results["gflops"] = {
                "model_gflop_per_512px_image": round(gflop_per_image, 2),
                "achieved_gflops_marginal": round(gflop_per_image / marginal, 1),
                "achieved_gflops_whole_process": round(gflop_per_image * len(inputs) / ours_s, 1),
                "bf16_conv_peak_gflops": round(peak, 1),
                "share_of_peak_marginal": round(gflop_per_image / marginal / peak, 3),
                # the whole-process ratio if unetcli ran every image at the conv peak and started as fast as the
                # plain loop: the most any implementation could reach against this plain loop on this machine
                "whole_process_speedup_bound": round(plain_s / (plain_few_s - len(few) * plain_marginal + len(inputs) * gflop_per_image / peak), 2),
            }

        # 3. bf16 against fp32
        if "bf16" in parts:
            results["bf16_pixels_differing_from_fp32"] = round(class_agreement(model, inputs[:10], args.device), 6)

        # 4. one 8192x8192 RGB image through the overlap-tile path
        if "large" in parts:
            tile = cv2.imread(str(inputs[0]), cv2.IMREAD_GRAYSCALE)
            big = np.tile(tile, (16, 16))
            big = cv2.merge([big, np.roll(big, 3, 1), np.roll(big, 7, 0)])
            cv2.imwrite(str(scratch / "big.png"), big)
            del big
            seconds, rss = peak_rss_of(UNETCLI + ["predict", str(model), str(scratch / "big.png"), "-o", str(scratch / "big"), "-q",
                                                  "--device", args.device])
            results["large_8192_rgb"] = {"wall_s": round(seconds, 1), "peak_rss_mb": round(rss)}

        # 5. torch.compile against eager
        if "compile" in parts:
            results["compile"] = compile_against_eager(model, inputs[: args.compile_images], args.device)

        # 6. tiled against whole
        if "tiling" in parts:
            results["tiled_vs_whole"] = tiled_against_whole(model, args.device)
    results["load_at_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
