#!/usr/bin/env python
"""The ISBI 2012 figures of the shipped model (weights/membrane) on the held-out slices 25-29, for its model card.

1. What `unetcli evaluate weights/membrane HELD-OUT` reports: pixel error, Dice, the ISBI pixel error (1 - the
   maximal foreground F-score over probability thresholds 0.0, 0.1, ..., 1.0), and scikit-image's adapted Rand
   error and variation of information on the cell regions (4-connected components of class 255; true membrane
   left out; predicted membrane inside a true cell counted by scikit-image as one segment).
2. The same Rand error and VI after growing the predicted cells over the predicted membrane
   (skimage.segmentation.expand_labels) until no membrane is left: the nearest we come to the leaderboard's
   "after border thinning", which scored region topology rather than membrane width.

Usage: python benchmarks/membrane_boundaries.py   (needs ../shared/datasets/membrane; about 15 s on 2 CPU cores)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from membrane import MEMBRANE, TEST_SLICES, link_slices

REPO = Path(__file__).resolve().parent.parent


def evaluate_figures(data: Path) -> dict:
    from unetcli.evaluate import Evaluation, evaluate_model

    evaluation = next(e for e in evaluate_model(REPO / "weights" / "membrane", data) if isinstance(e, Evaluation))
    summary = evaluation.summary()
    cell = summary["objects"]["cell"]
    return {"pixel_error": summary["pixel_error"], "dice_membrane": summary["classes"]["membrane"]["dice"],
            "dice_cell": summary["classes"]["cell"]["dice"], "isbi_pixel_error": summary["isbi_pixel_error"],
            "isbi_threshold": summary["isbi_threshold"],
            **{k: cell[k] for k in ("rand_error", "rand_precision", "rand_recall", "vi_split", "vi_merge", "true_objects")}}


def grown_figures(data: Path) -> dict:
    """Rand error and VI (image means) with the predicted cells grown over the predicted membrane."""
    from skimage.metrics import adapted_rand_error, variation_of_information
    from skimage.segmentation import expand_labels

    import unetcli
    from unetcli.images import read_image, read_mask
    from unetcli.object_metrics import components

    model = unetcli.load(REPO / "weights" / "membrane")
    rows = []
    for i in TEST_SLICES:
        truth = components(read_mask(data / "masks" / f"{i}.png").values == 255)
        pred = expand_labels(components(model.predict(read_image(data / "images" / f"{i}.png")) == 255), distance=10**4)
        rows.append([adapted_rand_error(truth, pred)[0], *variation_of_information(truth, pred, ignore_labels=(0,))])
    error, split, merge = np.mean(rows, axis=0)
    return {"rand_error": round(float(error), 6), "vi_split": round(float(split), 6), "vi_merge": round(float(merge), 6)}


def main() -> None:
    if not (MEMBRANE / "images").is_dir():
        sys.exit(f"{MEMBRANE} is not present")
    with tempfile.TemporaryDirectory() as folder:
        data = link_slices(Path(folder) / "held-out", TEST_SLICES)
        print(json.dumps({"evaluate": evaluate_figures(data), "grown_over_membrane": grown_figures(data)}, indent=2))


if __name__ == "__main__":
    main()
