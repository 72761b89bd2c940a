#!/usr/bin/env python
"""Draw docs/demo_example.png (image | mask | prediction overlay) from a finished `unetcli demo DIR`.

Usage: unetcli demo /tmp/demo && python docs/make_figure.py /tmp/demo
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from unetcli.images import read_image, write_png

ROWS = 3
CELL = 200  # pixels per panel side
TITLES = ("image", "mask (0 / 255)", "prediction overlay")


def panel(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return cv2.resize(array[:, :, :3], (CELL, CELL), interpolation=cv2.INTER_NEAREST)


def main(demo: Path) -> Path:
    overlays = sorted((demo / "predictions").glob("*_overlay.png"))[:ROWS]
    if not overlays:
        raise SystemExit(f"{demo}/predictions has no *_overlay.png; run `unetcli demo {demo}` first")
    rows = []
    for overlay in overlays:
        stem = overlay.name[: -len("_overlay.png")]
        image = read_image(demo / "data" / "images" / f"{stem}.png")
        mask = read_image(demo / "data" / "masks" / f"{stem}.png")
        rows.append(np.hstack([panel(image), panel(mask), panel(read_image(overlay))]))
    header = np.full((28, CELL * 3, 3), 255, np.uint8)
    for i, title in enumerate(TITLES):
        cv2.putText(header, title, (i * CELL + 8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    target = Path(__file__).with_name("demo_example.png")
    write_png(target, np.vstack([header, *rows]))
    return target


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "unetcli-demo")))
