"""The label audit on the ISBI 2012 membrane training slices 0-24 with three masks corrupted (issue 14).

A copy of slices 0-24 (images linked, masks written) where three masks are corrupted as the issue asks:
  - slice 3: the cells (value 255) dilated by 5 px (thin membranes vanish, thick ones get thinner);
  - slice 11: the mask shifted 20 px right and down (reflected in at the border);
  - slice 19: a region's class flipped: the largest cell set to membrane (0).
Then `unetcli audit` (the library call behind it) with --folds K, and the ranks of the three. The pass mark: all
three among the 5 highest ranked. The fold models are, by default, fixed small ones (FIXED: resnet18, decoder 128,
256-px crops, --epochs x --samples crops, light augmentation; what `audit --config` sets); with --planned they are
planned within --minutes for all folds, as `unetcli audit --time-limit` does.

    nice python benchmarks/bench_audit.py [--folds 5] [--epochs 6] [--samples 64] [--planned --minutes 10]
                                          [--json benchmarks/results/audit.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_planner import cpu_facts
from membrane import MEMBRANE, TRAIN_SLICES

CORRUPTED = {"3": "dilated 5 px", "11": "shifted 20 px", "19": "largest cell flipped to membrane"}


def corrupt(mask: np.ndarray, how: str) -> np.ndarray:
    if how.startswith("dilated"):
        return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11)))
    if how.startswith("shifted"):
        padded = cv2.copyMakeBorder(mask, 20, 0, 20, 0, cv2.BORDER_REFLECT_101)
        return padded[: mask.shape[0], : mask.shape[1]].copy()
    count, labels, stats, _ = cv2.connectedComponentsWithStats((mask == 255).astype(np.uint8), connectivity=4)
    largest = 1 + int(np.argmax(stats[1:count, cv2.CC_STAT_AREA]))
    out = mask.copy()
    out[labels == largest] = 0
    return out


def make_data(folder: Path) -> dict:
    """folder/images (links) and folder/masks (copies, three corrupted); returns the share of pixels each changed."""
    changed = {}
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in TRAIN_SLICES:
        (folder / "images" / f"{i}.png").symlink_to((MEMBRANE / "images" / f"{i}.png").resolve())
        mask = cv2.imread(str(MEMBRANE / "masks" / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
        if str(i) in CORRUPTED:
            new = corrupt(mask, CORRUPTED[str(i)])
            changed[str(i)] = round(float(np.mean(new != mask)), 4)
            mask = new
        assert cv2.imwrite(str(folder / "masks" / f"{i}.png"), mask)
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=20.0, help="time limit of all folds (a cap unless --planned)")
    parser.add_argument("--planned", action="store_true", help="plan the fold models within --minutes")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "audit.json")
    args = parser.parse_args()
    if not (MEMBRANE / "images" / "0.png").exists():
        sys.exit(f"{MEMBRANE}: the membrane data is absent")
    from unetcli.audit import Audited, audit
    from unetcli.options import TrainOptions
    from unetcli.runtime import pick_device, pick_precision

    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "audit"
        changed = make_data(data)
        fixed = {} if args.planned else {"encoder": "resnet18", "decoder_width": 128, "crop": 256, "batch_size": 8,
                                         "epochs": args.epochs, "samples_per_epoch": args.samples, "augment": "light", "plan": False}
        options = TrainOptions.from_values({"data": data, "out": out / "models", "folds": args.folds, **fixed,
                                            "time_limit": args.minutes * 60, "seed": args.seed, "device": "cpu"}).validate()
        start = time.monotonic()
        result = next(e for e in audit(options, out) if isinstance(e, Audited))
        seconds = time.monotonic() - start
        plan = json.loads((out / "models" / "fold-1" / "model-best" / "unetcli.json").read_text())["plan"]
        cv = json.loads((out / "models" / "ensemble.json").read_text())["cross_validation"]
    ranks = {row.stem: rank for rank, row in enumerate(result.rows, 1)}
    report = {
        "machine": {**cpu_facts(), "precision": pick_precision("auto", pick_device("cpu")).name, "threads": __import__("torch").get_num_threads()},
        "folds": args.folds, "time_limit_minutes": args.minutes, "seed": args.seed, "seconds": round(seconds, 1),
        "planned": args.planned, "fold_options": plan["choices"] if plan else fixed,
        "fold_scores": [fold["score"] for fold in cv["per_fold"]],
        "corrupted": {stem: {"how": how, "pixels_changed": changed[stem], "rank": ranks[stem]} for stem, how in CORRUPTED.items()},
        "all_three_in_top_5": all(ranks[stem] <= 5 for stem in CORRUPTED),
        "ranking": [{"rank": r, "stem": row.stem, "disagreement": round(row.disagreement, 4), "dice": round(row.dice, 4)}
                    for r, row in enumerate(result.rows, 1)],
    }
    for entry in report["ranking"][:8]:
        mark = f"  <- corrupted: {CORRUPTED[entry['stem']]}" if entry["stem"] in CORRUPTED else ""
        print(f"{entry['rank']:>3}. slice {entry['stem']:>2}  disagreement {entry['disagreement']:.4f}  Dice {entry['dice']:.4f}{mark}")
    print(f"ranks of the corrupted: {', '.join(f'{s}: {ranks[s]}' for s in CORRUPTED)}; all in the top 5: "
          f"{report['all_three_in_top_5']}; {seconds:.0f}s on {report['machine']['cpu_model']} ({report['machine']['isa']}, "
          f"{report['machine']['precision']})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
