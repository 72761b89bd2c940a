"""Issue 13: with or without a border class? Train a small U-Net on touching discs (instance label images) in
several ways and count how often touching pairs come out as two objects after connected components of the
predicted object class.

Variants (same images, same seed, same training budget):
  border1   --mask-mode instances: background / object / border, border radius 1 (2-px lines at contacts)
  border2   the same with a border radius of 2 (4-px lines)
  ...+w     the same with --border-weight (the weight map from the instance ids)
  plain     object vs background only (binary masks of the union of the objects)
  gap+w     the U-Net paper: the radius-1 border pixels carved out as background, binary masks, --border-weight

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/bench_instances_border.py [--epochs 16] [--seeds 0]
Writes benchmarks/results/instances_border.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from skimage.measure import label

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unetcli.instance_masks import object_classes


def touching_discs(rng: np.random.Generator, size=(96, 96), pairs=3, singles=2, radii=(8, 12),
                   overlap=2.5) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image, uint16 ids): `pairs` pairs of discs that touch along a short line and `singles` isolated
    discs. Each disc is bright in the middle and dim at its rim, so a contact shows as a dim valley."""
    height, width = size
    discs: list[tuple[float, float, float]] = []
    for group in [2] * pairs + [1] * singles:
        for _ in range(200):
            r1, r2 = rng.uniform(*radii, 2)
            y, x = rng.uniform(r1 + 1, height - r1 - 1), rng.uniform(r1 + 1, width - r1 - 1)
            new = [(y, x, r1)]
            if group == 2:
                angle = rng.uniform(0, 2 * np.pi)
                step = r1 + r2 - overlap
                new.append((y + step * np.sin(angle), x + step * np.cos(angle), r2))
            inside = all(r + 1 < cy < height - r - 1 and r + 1 < cx < width - r - 1 for cy, cx, r in new)
            apart = all(np.hypot(cy - oy, cx - ox) > r + orr + 4 for cy, cx, r in new for oy, ox, orr in discs)
            if inside and apart:
                discs += new
                break
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    scores = np.stack([np.hypot(yy - cy, xx - cx) / r for cy, cx, r in discs])
    nearest = scores.argmin(axis=0)
    best = scores.min(axis=0)
    ids = np.where(best < 1, nearest + 1, 0).astype(np.uint16)
    image = np.where(best < 1, 90 + 130 * np.sqrt(np.clip(1 - best**2, 0, 1)), 40) + rng.normal(0, 8, ids.shape)
    return np.clip(image, 0, 255).astype(np.uint8), ids


def touching_pairs(ids: np.ndarray) -> list[tuple[int, int]]:
    """Pairs of object ids with 4-adjacent pixels."""
    found = set()
    for a, b in ((ids[:, :-1], ids[:, 1:]), (ids[:-1], ids[1:])):
        edge = (a != b) & (a != 0) & (b != 0)
        found |= {tuple(sorted(p)) for p in zip(a[edge].tolist(), b[edge].tolist())}
    return sorted(found)


def separation(ids: np.ndarray, objects: np.ndarray, connectivity: int) -> tuple[int, int, int, int]:
    """(touching pairs, pairs that come out as two components, predicted components, true objects that no
    component covers) for one image: each true object goes to the predicted component that covers most of it."""
    components = label(objects, connectivity=connectivity)
    owner = {}
    for k in range(1, int(ids.max()) + 1):
        hits = components[ids == k]
        hits = hits[hits != 0]
        owner[k] = int(np.bincount(hits).argmax()) if hits.size else 0
    pairs = touching_pairs(ids)
    split = sum(1 for a, b in pairs if owner[a] and owner[b] and owner[a] != owner[b])
    return len(pairs), split, int(components.max()), sum(1 for k in owner if not owner[k])


def write_set(folder: Path, rng: np.random.Generator, count: int, **layout) -> list[np.ndarray]:
    all_ids = []
    for i in range(count):
        image, ids = touching_discs(rng, **layout)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / "images" / f"d{i:02d}.png"), image)
        cv2.imwrite(str(folder / "labels" / f"d{i:02d}.png"), ids)
        all_ids.append(ids)
    return all_ids


def variant_masks(root: Path, train_ids: list[np.ndarray], name: str, seed: int) -> tuple[Path, list[str]]:
    """A DATA folder for one variant (images linked) and its extra train flags."""
    data = root / f"data-{name}-{seed}"
    (data / "masks").mkdir(parents=True)
    (data / "images").symlink_to(root / "train" / "images")
    for i, ids in enumerate(train_ids):
        if name.startswith("border"):
            mask = ids
        elif name == "plain":
            mask = np.where(ids > 0, 255, 0).astype(np.uint8)
        else:  # gap+w
            mask = np.where(object_classes(ids) == 1, 255, 0).astype(np.uint8)
        cv2.imwrite(str(data / "masks" / f"d{i:02d}.png"), mask)
    flags = ["--mask-mode", "instances" if name.startswith("border") else "binary"]
    return data, flags + (["--border-weight"] if name.endswith("+w") else [])


def run_variant(root: Path, name: str, train_ids, test_ids, args, seed: int) -> dict:
    data, flags = variant_masks(root, train_ids, name, seed)
    run, out = root / f"run-{name}-{seed}", root / f"out-{name}-{seed}"
    radius = name[len("border")] if name.startswith("border") else "1"
    unetcli = [sys.executable, "-c", (f"import sys, unetcli.instance_masks as m; m.BORDER_RADIUS = {radius}; "
                                      "from unetcli.cli import main; sys.argv[0] = 'unetcli'; main()")]
    start = time.perf_counter()
    subprocess.run([*unetcli, "train", data, "-o", run, "--encoder", "resnet18", "--decoder-width", "128", "--crop", "96",
                    "--epochs", str(args.epochs), "--samples-per-epoch", str(args.samples), "--batch-size", "8",
                    "--val-split", "0", "--augment", "light", "--seed", str(seed), "--no-plan", "--quiet", *flags],
                   check=True, capture_output=True)
    seconds = time.perf_counter() - start
    subprocess.run([*unetcli, "predict", run / "model-best", root / "test" / "images", "-o", out, "--quiet"],
                   check=True, capture_output=True)
    totals = {4: [0, 0, 0, 0], 8: [0, 0, 0, 0]}
    truth_objects = 0
    for i, ids in enumerate(test_ids):
        predicted = cv2.imread(str(out / f"d{i:02d}.png"), cv2.IMREAD_UNCHANGED)
        objects = predicted == (255 if name in ("plain", "gap+w") else 1)
        truth_objects += int(ids.max())
        for connectivity, key in ((1, 4), (2, 8)):
            totals[key] = [a + b for a, b in zip(totals[key], separation(ids, objects, connectivity))]
    return {"variant": name, "seed": seed, "train_seconds": round(seconds, 1), "touching_pairs": totals[4][0],
            "separated_4conn": totals[4][1], "separated_8conn": totals[8][1], "objects_true": truth_objects,
            "components_4conn": totals[4][2], "components_8conn": totals[8][2], "objects_missed": totals[4][3]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default="border1,border1+w,border2,border2+w,plain,gap+w")
    parser.add_argument("--test-images", type=int, default=16)
    parser.add_argument("--radii", default="8,12", help="disc radius range, pixels")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--singles", type=int, default=2)
    parser.add_argument("--overlap", type=float, default=2.5, help="how far the discs of a pair overlap, pixels")
    parser.add_argument("--out", default="instances_border.json")
    args = parser.parse_args()
    rng = np.random.default_rng(13)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        layout = {"radii": tuple(float(r) for r in args.radii.split(",")), "pairs": args.pairs, "singles": args.singles,
                  "overlap": args.overlap}
        train_ids, test_ids = write_set(root / "train", rng, 24, **layout), write_set(root / "test", rng, args.test_images, **layout)
        for seed in (int(s) for s in args.seeds.split(",")):
            for name in args.variants.split(","):
                results.append(run_variant(root, name, train_ids, test_ids, args, seed))
                print(json.dumps(results[-1]), flush=True)
    target = REPO / "benchmarks" / "results" / args.out
    target.write_text(json.dumps({"epochs": args.epochs, "samples_per_epoch": args.samples, "train_images": 24,
                                  "test_images": args.test_images, **layout, "results": results}, indent=1))


if __name__ == "__main__":
    main()
