"""Does predict's doubt score rank images by their true error? Spearman correlation on two sets.

a) membrane: the held-out ISBI 2012 slices 25-29 cut into 128 x 128 tiles (80 "images"), predicted by the shipped
   weights/membrane. That folder predates the training intensity statistics, so they are computed here from its
   training slices 0-24 exactly as `unetcli train` stores them (doubt.training_intensity) and handed to the predictor.
b) synthetic: the demo's data (unetcli.demo.make_dataset, 48 pairs): a model trained here with a fixed amount of
   work (the demo planner's choice on this CPU, resnet18 / decoder 128, 160-px crops, light augmentation, --epochs
   of 256 crops; a time budget would train less on a busy machine), then 40 new images of which 24 are made harder: Gaussian blur, Gaussian noise or a contrast shift,
   8 each, at severities spread evenly from mild to strong.
Each set with and without --tta. The true error of an image is its pixel error (share of pixels whose predicted
class differs from the truth). Prints the correlations of the score and of each part; writes a JSON.

    nice python benchmarks/bench_doubt.py [--json benchmarks/results/doubt.json] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_planner import cpu_facts
from membrane import MEMBRANE, TEST_SLICES, TRAIN_SLICES

from unetcli.doubt import image_doubt, image_statistics, training_intensity
from unetcli.images import read_image, read_mask

REPO = Path(__file__).resolve().parent.parent
TILE = 128
PARTS = ("score", "uncertain", "tta_disagreement", "intensity_shift")


def correlations(rows: list[dict]) -> dict:
    """Spearman rho (and p) of each doubt part against the pixel error, over the images."""
    errors = [row["error"] for row in rows]
    result = {}
    for part in PARTS:
        values = [row["doubt"][part] for row in rows]
        if any(v is None for v in values) or len(set(values)) < 2:
            continue
        rho, p = spearmanr(values, errors)
        result[part] = {"rho": round(float(rho), 4), "p": float(f"{p:.3g}")}
    return result


def score(predictor, images: list[np.ndarray], truths: list[np.ndarray], names: list[str]) -> list[dict]:
    """Predict each image (as predict does: whole, same-size images batched) and pair its doubt with its error."""
    rows = []
    for start in range(0, len(images), 8):
        batch = images[start: start + 8]
        ids, _, counted = predictor.predict_batch_doubt(batch, probs=False)
        for k, image in enumerate(batch):
            i = start + k
            doubt = image_doubt(counted[k], image, predictor.intensity)
            rows.append({"image": names[i], "error": round(float((ids[k] != truths[i]).mean()), 6), "doubt": doubt.to_dict()})
    return rows


def membrane_tiles(predictor) -> tuple[list, list, list]:
    images, truths, names = [], [], []
    for i in TEST_SLICES:
        image = read_image(MEMBRANE / "images" / f"{i}.png")
        truth = predictor.class_map.decode(read_mask(MEMBRANE / "masks" / f"{i}.png"), MEMBRANE / "masks" / f"{i}.png")
        for y in range(0, image.shape[0] - TILE + 1, TILE):
            for x in range(0, image.shape[1] - TILE + 1, TILE):
                images.append(image[y:y + TILE, x:x + TILE])
                truths.append(truth[y:y + TILE, x:x + TILE])
                names.append(f"{i}_y{y}_x{x}")
    return images, truths, names


def run_membrane(model: Path) -> dict:
    from unetcli.predictor import Predictor

    intensity = training_intensity(image_statistics(read_image(MEMBRANE / "images" / f"{i}.png")) for i in TRAIN_SLICES)
    images, truths, names = membrane_tiles(Predictor.from_folder(model, "cpu"))
    result = {"model": str(model.relative_to(REPO)) if model.is_relative_to(REPO) else str(model),
              "images": len(images), "tile": TILE, "intensity_from": "slices 0-24", "intensity": intensity}
    for tta in (False, True):
        predictor = Predictor.from_folder(model, "cpu", tta=tta)
        predictor.intensity = intensity
        rows = score(predictor, images, truths, names)
        result["tta" if tta else "plain"] = {"spearman": correlations(rows), "mean_error": _mean(rows, "error"),
                                             "rows": rows}
    return result


def _mean(rows: list[dict], key: str) -> float:
    return round(float(np.mean([row[key] for row in rows])), 6)


def degrade(image: np.ndarray, kind: str, strength: float) -> np.ndarray:
    """strength in (0, 1]: blur sigma up to 2.5 px, noise sd up to 40 grey levels, contrast down to 0.3x with an offset."""
    unit = image.astype(np.float32)
    if kind == "blur":
        unit = cv2.GaussianBlur(unit, (0, 0), 2.5 * strength)
    elif kind == "noise":
        unit = unit + np.random.default_rng(int(strength * 1000)).normal(0, 40 * strength, unit.shape).astype(np.float32)
    else:
        unit = (unit - 128) * (1 - 0.7 * strength) + 128 + 60 * strength
    return np.clip(unit, 0, 255).round().astype(np.uint8)


def synthetic_set(folder: Path) -> tuple[list, list, list]:
    from unetcli.demo import make_sample

    rng = np.random.default_rng(1)
    images, truths, names = [], [], []
    plan = [("clean", 0.0)] * 16 + [(kind, s) for kind in ("blur", "noise", "contrast") for s in np.linspace(0.15, 1.0, 8)]
    for k, (kind, strength) in enumerate(plan):
        image, mask = make_sample(rng, 192, 192)
        if kind != "clean":
            image = degrade(image, kind, float(strength))
        images.append(image[:, :, None])
        truths.append((mask > 0).astype(np.uint8))
        names.append(f"{k:02d}_{kind}_{strength:.2f}")
    return images, truths, names


TRAINING = {"encoder": "resnet18", "decoder_width": 128, "crop": 160, "augment": "light", "samples_per_epoch": 256,
            "batch_size": 8, "seed": 0, "plan": False}


def run_synthetic(folder: Path, epochs: int) -> dict:
    import unetcli
    from unetcli.demo import make_dataset
    from unetcli.predictor import Predictor

    started = time.perf_counter()
    data = make_dataset(folder / "data", count=48, seed=0)
    for _ in unetcli.train(data, out=folder / "run", epochs=epochs, **TRAINING):
        pass
    train_seconds = round(time.perf_counter() - started, 1)
    model = folder / "run" / "model-best"
    images, truths, names = synthetic_set(folder)
    result = {"train_images": 48, "test_images": len(images), "training": {**TRAINING, "epochs": epochs},
              "train_seconds": train_seconds,
              "degradations": "16 clean; blur sigma 0.4-2.5 px, noise sd 6-40, contrast x0.9-0.3 (+9-60), 8 each"}
    for tta in (False, True):
        predictor = Predictor.from_folder(model, "cpu", tta=tta)
        rows = score(predictor, images, truths, names)
        result["tta" if tta else "plain"] = {"spearman": correlations(rows), "mean_error": _mean(rows, "error"),
                                             "rows": rows}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "weights" / "membrane")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "doubt.json")
    args = parser.parse_args()
    from unetcli.runtime import pick_device, pick_precision

    started = time.perf_counter()
    report = {"machine": {**cpu_facts(), "precision": pick_precision("auto", pick_device("cpu")).name}}
    report["membrane"] = run_membrane(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        report["synthetic"] = run_synthetic(Path(tmp), args.epochs)
    report["seconds"] = round(time.perf_counter() - started, 1)
    for name in ("membrane", "synthetic"):
        for mode in ("plain", "tta"):
            found = report[name][mode]
            parts = ", ".join(f"{part} {v['rho']:+.3f}" for part, v in found["spearman"].items())
            print(f"{name:9s} {mode:5s} mean error {found['mean_error']:.4f}  Spearman vs error: {parts}")
    print(f"{report['machine']['cpu_model']} ({report['machine']['isa']}), {report['machine']['precision']}, "
          f"{report['seconds']} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
