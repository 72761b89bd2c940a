#!/usr/bin/env python
"""End-to-end benchmark of the real `unetcli` CLI, run as subprocesses.

1. `unetcli --help` wall time (median of 5 runs of the installed console script).
2. `unetcli demo DIR` wall time and the foreground Dice it reaches (from the demo's own output and from
   `unetcli evaluate DIR/run/model-best DIR/held-out --json`).
3. ISBI 2012 EM membrane data: train on slices 0-24 with `--val-split 0 --time-limit Nm` (otherwise default
   options), then `unetcli evaluate RUN/model-last TEST --json` on slices 25-29, which training never sees.
   model-last, not model-best: without validation model-best is chosen by *training* loss, so it says nothing
   about held-out data; model-last is the model at the end of the (clock-driven) LR schedule.
   Several budgets and augmentation presets give the time-to-quality table:
   `--minutes 5 10 --augment default elastic` trains four runs.

Usage:
    python benchmarks/bench_end_to_end.py                       # full run (~13 min on 2 cores)
    python benchmarks/bench_end_to_end.py --minutes 1           # smoke run
    python benchmarks/bench_end_to_end.py --skip-demo --skip-membrane

Figures are printed and written as JSON to --out (default benchmarks/results/end_to_end.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from membrane import MEMBRANE, TEST_SLICES, TRAIN_SLICES, link_slices

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "end_to_end.json"


def log(message: str = "") -> None:
    print(message, flush=True)


def cli_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m unetcli`."""
    script = Path(sys.executable).with_name("unetcli")
    return [str(script)] if script.exists() else [sys.executable, "-m", "unetcli"]


def run_cli(args: list[str], timeout: float | None = None, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    command = cli_command() + [str(a) for a in args]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    return result, time.perf_counter() - start


def check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"{what} exited {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}"
                           f"\n--- stderr ---\n{result.stderr[-3000:]}")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def load_snapshot() -> dict:
    return {"uptime": uptime(), "loadavg": [round(v, 2) for v in os.getloadavg()],
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def machine_facts() -> dict:
    import torch

    from unetcli.runtime import cpu_has_native_bf16, pick_device, pick_precision

    device = pick_device("auto")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device_auto": str(device),
        "cpu_has_native_bf16": cpu_has_native_bf16(),
        "precision_auto": pick_precision("auto", device).name,
        "cli": " ".join(Path(part).name for part in cli_command()),  # names only: results are shared
    }


def model_info(model_dir: Path) -> dict:
    """A model folder's metadata (from `unetcli info --json`)."""
    result, _ = run_cli(["info", model_dir, "--json"])
    check(result, "unetcli info")
    return json.loads(result.stdout)


def independent_dice(model_dir: Path, test_dir: Path, pred_dir: Path) -> dict:
    """Cross-check of `evaluate`: `unetcli predict` the test images, then score the written masks with numpy."""
    import cv2
    import numpy as np

    result, seconds = run_cli(["predict", model_dir, test_dir / "images", "-o", pred_dir, "--quiet"])
    check(result, "unetcli predict")
    inter = {0: 0, 255: 0}
    sums = {0: 0, 255: 0}
    wrong = total = 0
    for truth_path in sorted((test_dir / "masks").glob("*.png")):
        truth = cv2.imread(str(truth_path), cv2.IMREAD_UNCHANGED)
        pred = cv2.imread(str(pred_dir / truth_path.name), cv2.IMREAD_UNCHANGED)
        if pred is None or pred.shape != truth.shape:
            raise RuntimeError(f"predicted mask for {truth_path.name} missing or of another shape")
        extra = set(np.unique(pred).tolist()) - {0, 255}
        if extra:
            raise RuntimeError(f"predicted mask {truth_path.name} holds values {sorted(extra)} besides 0 and 255")
        for v in (0, 255):
            inter[v] += int(((pred == v) & (truth == v)).sum())
            sums[v] += int((pred == v).sum() + (truth == v).sum())
        wrong += int((pred != truth).sum())
        total += truth.size
    return {"predict_wall_s": round(seconds, 1), "pixel_error": round(wrong / total, 6),
            "dice_value_0": round(2 * inter[0] / sums[0], 6), "dice_value_255": round(2 * inter[255] / sums[255], 6)}


def evaluate(model_dir: Path, data: Path, *options: str) -> tuple[dict, float]:
    result, seconds = run_cli(["evaluate", model_dir, data, "--json", *options])
    check(result, "unetcli evaluate")
    return json.loads(result.stdout), seconds


def bench_help(runs: int = 5) -> dict:
    times = []
    for _ in range(runs):
        result, seconds = run_cli(["--help"])
        check(result, "unetcli --help")
        times.append(seconds)
    return {"runs": runs, "median_s": round(statistics.median(times), 3), "all_s": [round(t, 3) for t in times]}


def bench_demo(workdir: Path) -> dict:
    folder = workdir / "demo"
    result, seconds = run_cli(["demo", folder])
    check(result, "unetcli demo")
    output = result.stdout + result.stderr
    match = re.search(r"foreground Dice\s+([0-9.]+|-)\s+on\s+(\d+) held-out", output)
    reported = float(match.group(1)) if match and match.group(1) != "-" else None
    epochs = len(re.findall(r"^epoch \d+/\d+", result.stderr, re.MULTILINE))
    summary, eval_s = evaluate(folder / "run" / "model-best", folder / "held-out")
    fg = summary["classes"].get("foreground", {})
    return {
        "wall_s": round(seconds, 1),
        "epochs": epochs,
        "held_out_images": summary["images"],
        "foreground_dice_reported_by_demo": reported,
        "foreground_dice": fg.get("dice"),
        "background_dice": summary["classes"].get("background", {}).get("dice"),
        "pixel_error": summary["pixel_error"],
        "evaluate_wall_s": round(eval_s, 1),
        "demo_tail": output.strip().splitlines()[-3:],
    }


def split_membrane(source: Path, workdir: Path) -> tuple[Path, Path]:
    return (link_slices(workdir / "membrane" / "train", TRAIN_SLICES, source),
            link_slices(workdir / "membrane" / "test", TEST_SLICES, source))


def bench_membrane(train_dir: Path, test_dir: Path, workdir: Path, minutes: float, augment: str) -> dict:
    run_dir = workdir / "membrane" / f"run-{augment}-{minutes:g}m"
    args = ["train", train_dir, "--val-split", "0", "-o", run_dir, "--time-limit", f"{minutes:g}m", "--json"]
    if augment != "default":
        args += ["--augment", augment]
    log(f"  $ unetcli {' '.join(str(a) for a in args)}")
    result, train_s = run_cli(args)
    check(result, "unetcli train")
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    epochs = [e for e in events if e.get("event") == "epoch"]
    done = next((e for e in events if e.get("event") == "done"), {})

    model_dir = run_dir / "model-last"
    summary, eval_s = evaluate(model_dir, test_dir)
    meta = model_info(model_dir)
    values = {c["name"]: c["value"] for c in meta["classes"]["classes"]}
    check_numpy = independent_dice(model_dir, test_dir, run_dir / "pred")
    role = {0: "membrane", 255: "cell interior"}
    per_class = {}
    for name, entry in summary["classes"].items():
        value = values.get(name)
        per_class[name] = {"mask_value": value, "meaning": role.get(value, "?"),
                           **{k: entry[k] for k in ("dice", "iou", "precision", "recall", "dice_image_mean")}}
    return {
        "train_slices": f"{TRAIN_SLICES.start}-{TRAIN_SLICES.stop - 1}",
        "test_slices": f"{TEST_SLICES.start}-{TEST_SLICES.stop - 1}",
        "time_limit_min": minutes,
        "augment": augment,
        "train_command": "unetcli " + " ".join(str(a) for a in args),
        "train_pairs": meta.get("data", {}).get("train_pairs"),
        "val_pairs": meta.get("data", {}).get("val_pairs"),
        "model_epoch": meta.get("epoch"),
        "train_wall_s": round(train_s, 1),
        "epochs_done": len(epochs),
        "stop_reason": done.get("reason"),
        "epoch_seconds": [e["seconds"] for e in epochs],
        "train_loss": [round(e["train_loss"], 4) for e in epochs],
        "best_epoch_by_train_loss": done.get("best_epoch"),
        "evaluated_model": "model-last (no validation set, so model-best is picked by training loss)",
        "evaluate_wall_s": round(eval_s, 1),
        "test_images": summary["images"],
        "pixel_error": summary["pixel_error"],
        "pixel_accuracy": summary["pixel_accuracy"],
        "mean_dice": summary["mean_dice"],
        "classes": per_class,
        "confusion_matrix": summary["confusion_matrix"],
        "cross_check_predict_numpy": check_numpy,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--membrane", type=Path, default=MEMBRANE, help="ISBI 2012 membrane folder (images/, masks/)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[10], help="membrane training --time-limit(s) in minutes (default 10)")
    parser.add_argument("--augment", nargs="+", default=["default"], help="augmentation preset(s) for the membrane runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-membrane", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None, help="keep temp folders here (default: a temp dir, removed)")
    options = parser.parse_args()

    results: dict = {"command": " ".join([Path(sys.executable).name] + sys.argv), "load_start": load_snapshot()}
    log(f"load at start: {results['load_start']['uptime']}")
    results["machine"] = machine_facts()
    m = results["machine"]
    log(f"machine: {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), device {m['device_auto']}, "
        f"native bf16 {m['cpu_has_native_bf16']} -> precision auto = {m['precision_auto']}")

    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="unetcli-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    errors = []
    try:
        log("\n[1] unetcli --help")
        results["help"] = bench_help()
        log(f"  median {results['help']['median_s']:.3f} s of {results['help']['all_s']}")

        if options.skip_demo:
            log("\n[2] demo: skipped (--skip-demo)")
        else:
            log("\n[2] unetcli demo DIR")
            try:
                d = results["demo"] = bench_demo(workdir)
                log(f"  wall {d['wall_s']:.1f} s, {d['epochs']} epochs; foreground Dice {d['foreground_dice']} "
                    f"(demo printed {d['foreground_dice_reported_by_demo']}) on {d['held_out_images']} held-out images; "
                    f"pixel error {d['pixel_error']}")
            except Exception as err:  # noqa: BLE001 - keep going: report what fails
                errors.append(f"demo: {err}")
                log(f"  FAILED: {err}")

        if options.skip_membrane:
            log("\n[3] membrane: skipped (--skip-membrane)")
        elif not (options.membrane / "images").is_dir() or not (options.membrane / "masks").is_dir():
            log(f"\n[3] membrane: skipped ({options.membrane} has no images/ and masks/)")
            results["membrane"] = {"skipped": f"{options.membrane} missing"}
        else:
            train_dir, test_dir = split_membrane(options.membrane, workdir)
            results["membrane"] = []
            for augment, minutes in [(a, m) for a in options.augment for m in options.minutes]:
                log(f"\n[3] membrane (ISBI 2012): train slices 0-24 for {minutes:g} min (--augment {augment}), test on 25-29")
                run_membrane(train_dir, test_dir, workdir, minutes, augment, results["membrane"], errors)
            if results["membrane"]:
                log("\ntime to quality (test slices 25-29): augment, minutes, epochs, pixel error, Dice per class")
                for r in results["membrane"]:
                    dice = ", ".join(f"{name} {c['dice']}" for name, c in r["classes"].items())
                    log(f"  {r['augment']:<8} {r['time_limit_min']:>4g} min  {r['epochs_done']:>3} epochs  "
                        f"pixel error {r['pixel_error']}  Dice {dice}")
    finally:
        if options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    results["load_end"] = load_snapshot()
    results["errors"] = errors
    log(f"\nload at end: {results['load_end']['uptime']}")
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"results: {options.out}")
    return 1 if errors else 0


def run_membrane(train_dir: Path, test_dir: Path, workdir: Path, minutes: float, augment: str,
                 runs: list, errors: list) -> None:
    """One membrane training run and its held-out evaluation, appended to `runs` (failures to `errors`)."""
    try:
        r = bench_membrane(train_dir, test_dir, workdir, minutes, augment)
        runs.append(r)
        log(f"  {r['train_pairs']} training / {r['val_pairs']} validation pairs")
        log(f"  training {r['train_wall_s']:.1f} s wall, {r['epochs_done']} epochs ({r['stop_reason']}); "
            f"epoch times {r['epoch_seconds']}")
        log(f"  train loss {r['train_loss']}")
        log(f"  evaluated {r['evaluated_model']}")
        log(f"  test ({r['test_images']} slices, unseen in training): pixel error {r['pixel_error']}, "
            f"mean Dice {r['mean_dice']}")
        for name, c in r["classes"].items():
            log(f"    {name:<11} value {c['mask_value']!s:<4} ({c['meaning']}): Dice {c['dice']}  IoU {c['iou']}  "
                f"precision {c['precision']}  recall {c['recall']}")
        log(f"  confusion matrix (rows truth, cols prediction): {r['confusion_matrix']}")
        x = r["cross_check_predict_numpy"]
        log(f"  cross-check (unetcli predict + numpy): pixel error {x['pixel_error']}, Dice value 0 "
            f"{x['dice_value_0']}, value 255 {x['dice_value_255']}")
    except Exception as err:  # noqa: BLE001 - keep going: report what fails
        errors.append(f"membrane {augment} {minutes:g} min: {err}")
        log(f"  FAILED: {err}")


if __name__ == "__main__":
    sys.exit(main())
