"""Cross-validation ensembles on the ISBI 2012 membrane slices (issue 14): quality and predict throughput.

Trains on slices 0-24, with fixed options (not planned, so both sides train alike):
  - one model: `unetcli train --val-split 0.2` (20 training slices, model-best chosen on 5);
  - a K-fold ensemble: `unetcli train --folds K` (each fold trains on about (K-1)/K of the 25, model-best chosen
    on the rest), the same epochs and crops per epoch per fold: K times the training time.
Both are evaluated on the held-out slices 25-29 (`unetcli evaluate`: pixel error, mean Dice). Then predict
throughput: the five 512 x 512 held-out images through each (Predictor, whole images), alternating single and
ensemble passes so a busy machine slows both alike; images/s of each and their ratio.

    nice python benchmarks/bench_folds.py [--folds 3] [--epochs 6] [--samples 64] [--json benchmarks/results/folds.json]
    nice python benchmarks/bench_folds.py --speed-only    (1 epoch of 16 crops per model: throughput, no quality)
    nice python benchmarks/bench_folds.py --folds 5 --epochs 8 --samples 128 --single-epochs 40
        (the single model trains as long as the five folds together)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_planner import cpu_facts
from membrane import MEMBRANE, TEST_SLICES, TRAIN_SLICES, link_slices


def cli(*args) -> str:
    from typer.testing import CliRunner

    from unetcli.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code != 0:
        raise RuntimeError(f"unetcli {' '.join(map(str, args))} exited {result.exit_code}: {result.output[-2000:]}")
    return result.stdout


def scores(model: Path, test: Path) -> dict:
    summary = [json.loads(line) for line in cli("evaluate", model, test, "--json").splitlines() if line.startswith("{")][-1]
    return {"pixel_error": round(summary["pixel_error"], 4), "mean_dice": round(summary["mean_dice"], 4)}


def throughput(models: dict[str, Path], test: Path, rounds: int) -> dict:
    """images/s of each model over `rounds` alternating passes of the held-out images (after one warm-up each)."""
    from unetcli.checkpoint import resolve_model_dir
    from unetcli.images import read_image
    from unetcli.predictor import Predictor

    images = [read_image(path) for path in sorted((test / "images").iterdir())]
    predictors = {name: Predictor.from_folder(resolve_model_dir(path), "cpu") for name, path in models.items()}
    seconds = dict.fromkeys(models, 0.0)
    for predictor in predictors.values():
        predictor.predict_image(images[0])
    for _ in range(rounds):
        for name, predictor in predictors.items():
            start = time.perf_counter()
            for image in images:
                predictor.predict_image(image)
            seconds[name] += time.perf_counter() - start
    return {name: round(rounds * len(images) / s, 3) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--single-epochs", type=int, default=None,
                        help="epochs of the single model (default --epochs; folds x epochs: the same total training)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed-only", action="store_true", help="train 1 epoch of 16 crops; measure throughput only")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "folds.json")
    args = parser.parse_args()
    if not (MEMBRANE / "images" / "0.png").exists():
        sys.exit(f"{MEMBRANE}: the membrane data is absent")
    from unetcli.runtime import pick_device, pick_precision

    if args.speed_only:
        args.epochs, args.samples = 1, 16
    fixed = ["--encoder", "resnet18", "--decoder-width", "128", "--crop", "256", "--epochs", args.epochs, "--samples-per-epoch",
             args.samples, "--batch-size", 8, "--augment", "light", "--seed", args.seed, "--no-plan", "--device", "cpu", "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        train, test = link_slices(Path(tmp) / "train", TRAIN_SLICES), link_slices(Path(tmp) / "test", TEST_SLICES)
        timings = {}
        single = ["--val-split", "0.2", "--epochs", args.single_epochs or args.epochs]  # (the last --epochs counts)
        for name, extra in (("single", single), ("ensemble", ["--folds", args.folds])):
            start = time.monotonic()
            cli("train", train, "-o", Path(tmp) / name, *fixed, *extra)
            timings[name] = round(time.monotonic() - start, 1)
        runs = {"single": Path(tmp) / "single", "ensemble": Path(tmp) / "ensemble"}
        quality = {name: scores(path, test) if not args.speed_only else {"pixel_error": None} for name, path in runs.items()}
        folds = {} if args.speed_only else {f"fold-{k}": scores(Path(tmp) / "ensemble" / f"fold-{k}", test)
                                            for k in range(1, args.folds + 1)}
        cv = json.loads((Path(tmp) / "ensemble" / "ensemble.json").read_text())["cross_validation"]
        speed = throughput(runs, test, args.rounds)
    report = {
        "machine": {**cpu_facts(), "precision": pick_precision("auto", pick_device("cpu")).name,
                    "threads": __import__("torch").get_num_threads()},
        "options": {"folds": args.folds, "epochs": args.epochs, "single_epochs": args.single_epochs or args.epochs, "samples_per_epoch": args.samples, "seed": args.seed,
                    "model": "resnet18, decoder 128, crop 256, light augmentation, not planned"},
        "train_seconds": timings, "held_out_25_29": quality, "folds_alone_25_29": folds,
        "cross_validated": {"mean": cv["mean"].get("score"), "sd": cv["sd"].get("score")},
        "predict_images_per_s": speed, "ensemble_speed_ratio": round(speed["ensemble"] / speed["single"], 3),
        "pixel_error_gain": None if args.speed_only else round(quality["single"]["pixel_error"] - quality["ensemble"]["pixel_error"], 4),
    }
    print(json.dumps(report, indent=2))
    print(f"pixel error on 25-29: single {quality['single']['pixel_error']}, {args.folds}-fold ensemble "
          f"{quality['ensemble']['pixel_error']} (folds alone: {', '.join(str(f['pixel_error']) for f in folds.values())}); "
          f"predict: {speed['single']} vs {speed['ensemble']} images/s ({report['ensemble_speed_ratio']}x)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
