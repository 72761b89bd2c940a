"""Which markers split touching objects best: rules for `predict --save instances --split auto` measured on
synthetic scenes of touching discs and single ellipses with known instance ids (no model involved).

Each scene holds groups far apart from each other: single discs, single ellipses (aspect 1.3-2.5), pairs of
touching discs (centre distance 0.75-1.0 times the sum of the radii; the radii may differ by up to 2x) and
triplets. Object boundaries are roughened the way predicted masks are (each boundary point moved in or out by
smoothed noise, `--rough` pixels std; touching objects may then touch less or more), at three object sizes (radii
4-9, 8-18, 16-40 pixels). Specks under 16 pixels are dropped, as predict's default --min-size does. Per rule:
objects found against the truth, object F1 at IoU 0.5 (mean and worst over size x roughness), pairs split, and
singles kept whole. Results: benchmarks/results/split.json; the choice: docs/decisions.md, "Objects (issue 13)".

    python benchmarks/bench_split.py [--scenes 4] [--seed 0] [--rough 0.5 1 1.5] [--json benchmarks/results/split.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import label
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from unetcli.instances import extended_maxima, split_foreground

ROUGH = 1.0  # boundary roughness: each boundary point moved in or out, by this many pixels (std), smoothly
SIZES = {"small": (4, 9), "medium": (8, 18), "large": (16, 40)}


def _group(rng, kind: str, low: int, high: int) -> list[tuple]:
    """Objects (cy, cx, ry, rx, angle) around (0, 0)."""
    if kind == "disc":
        r = rng.uniform(low, high)
        return [(0, 0, r, r, 0)]
    if kind == "ellipse":
        r = rng.uniform(low, high)
        aspect = rng.uniform(1.3, 2.5)
        return [(0, 0, r * np.sqrt(aspect), r / np.sqrt(aspect), rng.uniform(0, np.pi))]
    count = 2 if kind == "pair" else 3
    radii = rng.uniform(low, high, count)
    radii[1] = np.clip(radii[1], radii[0] / 2, radii[0] * 2)
    objects = [(0, 0, radii[0], radii[0], 0)]
    angle = rng.uniform(0, 2 * np.pi)
    for i in range(1, count):
        d = (radii[0] + radii[i]) * rng.uniform(0.75, 1.0)
        a = angle + (i - 1) * rng.uniform(np.pi / 3 * 1.2, np.pi / 3 * 1.8)
        objects.append((d * np.sin(a), d * np.cos(a), radii[i], radii[i], 0))
    return objects


def scene(rng, low: int, high: int, cell: int, rough: float = ROUGH) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(truth labels, roughened foreground, group kind of each truth label - 1)."""
    grid = 5
    size = grid * cell
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    truth = np.zeros((size, size), np.int32)
    best = np.full((size, size), np.inf, np.float32)
    kinds: list[str] = []
    for gy in range(grid):
        for gx in range(grid):
            kind = rng.choice(["disc", "ellipse", "pair", "pair", "triplet"])
            for (cy, cx, ry, rx, angle) in _group(rng, kind, low, high):
                cy, cx = cy + (gy + 0.5) * cell, cx + (gx + 0.5) * cell
                dy, dx = yy - cy, xx - cx
                u = (dy * np.cos(angle) + dx * np.sin(angle)) / ry
                v = (-dy * np.sin(angle) + dx * np.cos(angle)) / rx
                radius = np.sqrt(u * u + v * v)  # < 1 inside; the smallest claims a shared pixel
                kinds.append(str(kind))
                claim = (radius < 1) & (radius < best)
                truth[claim] = len(kinds)
                best[claim] = radius[claim]
    noise = ndi.gaussian_filter(rng.normal(0, 1, truth.shape), 2.0)
    inside = truth > 0
    signed = ndi.distance_transform_edt(inside) - ndi.distance_transform_edt(~inside)  # > 0 inside
    rough = signed - 0.5 + rough * noise / noise.std() > 0  # the boundary moved by `rough` pixels (std)
    return truth, rough, kinds


def match(truth: np.ndarray, found: np.ndarray) -> tuple[int, dict]:
    """Matches at IoU > 0.5 (one-to-one by construction) and, per truth label, the found label it matched."""
    pairs = np.stack([truth.ravel(), found.ravel()], 1)
    pairs = pairs[(pairs[:, 0] > 0) | (pairs[:, 1] > 0)]
    keys, inter = np.unique(pairs, axis=0, return_counts=True)
    area_t = np.bincount(truth.ravel())
    area_f = np.bincount(found.ravel())
    matched = {}
    for (t, f), n in zip(keys, inter):
        if t and f and n / (area_t[t] + area_f[f] - n) > 0.5:
            matched[int(t)] = int(f)
    return len(matched), matched


def rules(fg: np.ndarray) -> dict[str, np.ndarray]:
    """Every candidate rule's labels for one foreground."""
    cc = label(fg, connectivity=1)
    edt = ndi.distance_transform_edt(fg)
    out = {"off (components)": cc}

    def grow(markers):
        labels = watershed(-edt, label(markers, connectivity=2), mask=fg)
        rest = fg & (labels == 0)
        if rest.any():
            extra = label(rest, connectivity=1)
            labels[rest] = extra[rest] + labels.max()
        return labels

    out["h-maxima h=1 px (scikit-image)"] = grow(h_maxima(edt, 1))
    for h in (0.5, 0.75, 1, 1.5, 2):
        out[f"extended maxima h={h} px"] = grow(extended_maxima(edt, h) & fg)
    peak = ndi.maximum(edt, cc, np.arange(1, cc.max() + 1)) if cc.max() else np.zeros(0)
    radius = float(np.median(peak)) if peak.size else 1.0
    for k in (0.75,):
        coords = peak_local_max(edt, min_distance=max(1, int(k * radius)), labels=cc, exclude_border=False)
        markers = np.zeros(fg.shape, bool)
        markers[tuple(coords.T)] = True
        out[f"peak_local_max min_distance={k} x median radius"] = grow(markers)
    for f in (0.15,):
        top = np.zeros(cc.max() + 1)
        top[1:] = peak
        relative = edt / np.maximum(top[cc], 1e-6)
        out[f"relative extended maxima {f} x radius"] = grow(extended_maxima(relative, f) & fg)
    for low, f in ((0.5, 0.03), (0.5, 0.08), (0.75, 0.03), (0.75, 0.05)):
        out[f"adaptive h = max({low} px, {f} x radius)"] = split_foreground(fg, depth=f, min_depth=low)
    out["unetcli (split auto)"] = split_foreground(fg)
    return {name: drop_specks(labels) for name, labels in out.items()}


def drop_specks(labels: np.ndarray, min_size: int = 16) -> np.ndarray:
    """As predict's default --min-size does."""
    areas = np.bincount(labels.ravel())
    keep = areas >= min_size
    keep[0] = False
    new = np.zeros(len(areas), np.int64)
    new[keep] = np.arange(1, keep.sum() + 1)
    return new[labels]


def measure(table: dict, key: str, truth: np.ndarray, kinds: np.ndarray, found: np.ndarray) -> None:
    hits, matched = match(truth, found)
    row = table.setdefault(key, {"truth": 0, "found": 0, "hits": 0, "pairs": 0, "pairs_split": 0, "singles": 0, "singles_whole": 0})
    row["truth"] += int(truth.max())
    row["found"] += len(np.unique(found)) - 1
    row["hits"] += hits
    for t in range(1, truth.max() + 1):
        if kinds[t - 1] in ("disc", "ellipse"):
            row["singles"] += 1
            row["singles_whole"] += t in matched
        elif kinds[t - 1] == "pair":
            row["pairs"] += 1
            row["pairs_split"] += t in matched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=4, help="scenes of 25 groups per size and roughness")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rough", type=float, nargs="+", default=[0.5, 1.0, 1.5], help="boundary roughness (pixels)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    table: dict = {}
    for rough in args.rough:
        for size, (low, high) in SIZES.items():
            for _ in range(args.scenes):
                truth, fg, kinds = scene(rng, low, high, cell=int(high * 6), rough=rough)
                for name, found in rules(fg).items():
                    measure(table.setdefault(name, {}), f"{size}, rough {rough}", truth, np.asarray(kinds), found)
    for name, cases in table.items():
        f1 = {case: 2 * r["hits"] / (r["truth"] + r["found"]) for case, r in cases.items()}
        total = {k: sum(r[k] for r in cases.values()) for k in ("truth", "found", "pairs", "pairs_split", "singles", "singles_whole")}
        worst = min(f1, key=f1.get)
        print(f"{name:48s} found {total['found']}/{total['truth']}, F1 mean {np.mean(list(f1.values())):.3f}, "
              f"worst {f1[worst]:.3f} ({worst}), pairs split {total['pairs_split'] / total['pairs']:.1%}, "
              f"singles whole {total['singles_whole'] / total['singles']:.1%}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
