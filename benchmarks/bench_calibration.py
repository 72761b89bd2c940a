"""Temperature scaling on the ISBI 2012 membrane slices: ECE, Brier and pixel errors before and after calibration.

Two fits of one temperature T for a model folder (default: the shipped weights/membrane), scored on the held-out
slices 25-29 (pixel by pixel, all 5 x 512 x 512 pixels):

  a) `unetcli calibrate MODEL` on slices 20-24 (the library call behind the command, which writes a calibrated
     copy of the folder); 20-24 are the last five of the training split 0-24. For weights/membrane they are
     slices it was *trained* on (it was trained on 0-24 with --val-split 0), so this T is fitted where the model
     is more confident and more often right than on unseen slices: it under-corrects. A model trained with
     `--val-split` gets its T from its own validation slices at the end of training instead.
  b) leave one slice out within 25-29: T fitted on four held-out slices, scored on the fifth, pooled over the five
     folds (the fit never sees the pixels it is scored on; what a held-out calibration set would give).

With --train, the model is first trained here (`unetcli train` on slices 0-24 with --val-split 0.2: a resnet18,
8 epochs of 64 crops of 256 px, as tests/conftest.py's membrane run but with a validation split), and c) the
temperature training fitted on its five validation slices is scored on 25-29 too.

Reported per fit: T; ECE (15 bins, confidence max(p, 1 - p) of the foreground probability p) and Brier score
before (T = 1) and after; the pixel error of the masks (threshold 0.5 or argmax: unchanged by construction,
logit / T keeps its sign and the order of the classes) and the ISBI pixel error (1 - max foreground F over thresholds 0.0 ... 1.0 of p, which T can move).

    python benchmarks/bench_calibration.py [--model weights/membrane | --train] [--json benchmarks/results/calibration.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from membrane import MEMBRANE, TEST_SLICES, link_slices

from unetcli.calibration import brier_score, calibrate_model, expected_calibration_error, fit_temperature, scaled_probabilities
from unetcli.metrics import foreground_f_counts, max_f_error

REPO = Path(__file__).resolve().parent.parent
FIT_SLICES = range(20, 25)


def held_out_logits(model: Path) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    """Per held-out slice: the raw logits (T = 1) as predict computes them ((N,) for a binary model, else (N, K)),
    and the class ids; and whether the model is binary (weights/membrane is not: two classes, softmax)."""
    from unetcli.data import Pair, read_sample
    from unetcli.predictor import Predictor

    predictor = Predictor.from_folder(model, "cpu")
    predictor.temperature = 1.0
    logits, labels = [], []
    for i in TEST_SLICES:
        pair = Pair(f"{i}", MEMBRANE / "images" / f"{i}.png", MEMBRANE / "masks" / f"{i}.png")
        sample = read_sample(pair)
        z = predictor.image_logits(sample.image, pair.image).astype(np.float64)
        logits.append(z.reshape(len(z), -1).T[:, 0] if predictor.class_map.is_binary else z.reshape(len(z), -1).T)
        labels.append(predictor.class_map.decode(sample.raw_mask, pair.mask).ravel())
    return logits, labels, predictor.class_map.is_binary


def scores(logits: np.ndarray, labels: np.ndarray, temperature: float, binary: bool) -> dict:
    """ECE, Brier (two-class softmax: summed over both classes, i.e. twice the foreground's squared error), the
    pixel error of the masks predict writes (threshold 0.5 or argmax) and the ISBI pixel error of the cell
    (class 1) probability."""
    p = scaled_probabilities(logits, binary, temperature)
    foreground = p if binary else p[:, 1]
    decided = foreground > 0.5 if binary else p.argmax(axis=1) == 1
    return {"ece": round(expected_calibration_error(p, labels), 5), "brier": round(brier_score(p, labels), 5),
            "pixel_error": round(float(np.mean(decided != (labels == 1))), 5),
            "isbi_pixel_error": round(max_f_error(foreground_f_counts(foreground, labels == 1))[0], 5)}


def leave_one_out(logits: list[np.ndarray], labels: list[np.ndarray], binary: bool) -> dict:
    """b): per held-out slice, T from the other four; scores over the pooled probabilities."""
    temperatures, pooled = [], []
    for k in range(len(logits)):
        rest = [j for j in range(len(logits)) if j != k]
        t = fit_temperature(np.concatenate([logits[j] for j in rest]), np.concatenate([labels[j] for j in rest]), binary)
        temperatures.append(round(t, 4))
        pooled.append(logits[k] / t)
    after = scores(np.concatenate(pooled), np.concatenate(labels), 1.0, binary)
    return {"temperatures": temperatures, "after": after}


TRAIN = ("--encoder", "resnet18", "--crop", "256", "--epochs", "8", "--samples-per-epoch", "64", "--batch-size", "8",
         "--val-split", "0.2", "--augment", "light", "--no-plan", "--quiet")


def train_model(folder: Path) -> Path:
    """c): a model trained on slices 0-24 with a validation split; returns its model-best/."""
    import subprocess

    data = link_slices(folder / "train", range(25))
    subprocess.run([sys.executable, "-m", "unetcli", "train", str(data), "-o", str(folder / "run"), *TRAIN], check=True)
    return folder / "run" / "model-best"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "weights" / "membrane")
    parser.add_argument("--train", action="store_true", help="train a model with a validation split first (c)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        stored = None
        if args.train:
            from unetcli.modelmeta import ModelMeta

            args.model = train_model(Path(tmp))
            stored = ModelMeta.load(args.model).calibration
        fit_data = link_slices(Path(tmp) / "fit", FIT_SLICES)
        fitted = calibrate_model(args.model, fit_data, Path(tmp) / "calibrated", device="cpu")
        logits, labels, binary = held_out_logits(args.model)
    all_logits, all_labels = np.concatenate(logits), np.concatenate(labels)
    result = {
        "model": "resnet18 trained here: " + " ".join(TRAIN) if args.train else (
            str(args.model.resolve().relative_to(REPO)) if args.model.resolve().is_relative_to(REPO) else args.model.name),
        "held_out_slices": f"{TEST_SLICES.start}-{TEST_SLICES.stop - 1}",
        "before": scores(all_logits, all_labels, 1.0, binary),
        "a_calibrate_on_slices_20_24": {"temperature": round(fitted.temperature, 4),
                                        "fit_ece_before_after": [round(fitted.ece_before, 5), round(fitted.ece_after, 5)],
                                        "after": scores(all_logits, all_labels, fitted.temperature, binary)},
        "b_leave_one_held_out_slice_out": leave_one_out(logits, labels, binary),
        "c_fitted_by_training_on_its_validation_slices": None if stored is None else {
            "temperature": stored["temperature"], "source": stored["source"],
            "val_ece_before_after": [stored["ece_before"], stored["ece_after"]],
            "after": scores(all_logits, all_labels, stored["temperature"], binary)},
        "seconds": round(time.monotonic() - start, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
