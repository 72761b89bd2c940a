"""Small helpers shared by the tests: writing tiny images and masks, running the CLI, reading results."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from typer.testing import CliRunner, Result

from unetcli.cli import app

# Stable output: wide lines, no colour codes (also set in conftest.py before unetcli.cli is imported).
CLI_ENV = {"TERMINAL_WIDTH": "200", "COLUMNS": "200", "NO_COLOR": "1"}
RUNNER = CliRunner(env=CLI_ENV)

# The ISBI 2012 membrane data beside the repository (absent in users' clones: tests that need it skip).
MEMBRANE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "membrane"


def link_slices(target: Path, slices) -> Path:
    """target/images and target/masks holding symlinks to the given membrane slices."""
    for sub in ("images", "masks"):
        (target / sub).mkdir(parents=True)
        for i in slices:
            (target / sub / f"{i}.png").symlink_to(MEMBRANE / sub / f"{i}.png")
    return target


# A U-Net small enough to train in seconds on two CPU cores; not planned, so the same on every machine.
TINY_TRAIN = ("--encoder", "resnet18", "--crop", "64", "--epochs", "2", "--samples-per-epoch", "16",
              "--batch-size", "4", "--seed", "0", "--no-plan")


def cli(*args, input: str | None = None) -> Result:
    """Run `unetcli ARGS...` in-process and return click's Result (stdout and stderr kept apart)."""
    return RUNNER.invoke(app, [str(a) for a in args], input=input)


def describe(result: Result) -> str:
    """Everything that helps when an assertion on a CLI run fails."""
    text = f"exit code {result.exit_code}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        text += "\n--- exception ---\n" + "".join(traceback.format_exception(result.exception))
    return text


def ok(result: Result) -> Result:
    assert result.exit_code == 0, describe(result)
    return result


def user_error(result: Result, code: int, *fragments: str) -> str:
    """Assert a clean user error: the exit code, one 'error:' line on stderr, no traceback. Returns the line."""
    assert result.exit_code == code, describe(result)
    assert "Traceback" not in result.output, describe(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), describe(result)
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in the error line\n{describe(result)}"
    return lines[0]


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------- image files


def write_image(path: Path, array: np.ndarray) -> Path:
    """Write an RGB(A) or gray array with OpenCV (any extension OpenCV knows: .png, .tif, .jpg, .bmp)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), array), path
    return path


def write_palette_png(path: Path, indices: np.ndarray, palette: list[int]) -> Path:
    """An indexed PNG (Pillow mode 'P')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(palette)
    image.save(path)
    return path


def read_values(path: Path) -> np.ndarray:
    """Pixel values exactly as stored (palette PNGs give indices, colour PNGs RGB)."""
    with Image.open(path) as image:
        return np.asarray(image)


def unique_values(paths) -> set:
    """Distinct gray values (ints) or colours (RGB tuples) over several mask files."""
    found: set = set()
    for path in paths:
        values = read_values(path)
        if values.ndim == 3:
            found |= {tuple(int(c) for c in v) for v in np.unique(values.reshape(-1, values.shape[2]), axis=0)}
        else:
            found |= {int(v) for v in np.unique(values)}
    return found


def class_layout(rng: np.random.Generator, height: int, width: int, classes: int) -> np.ndarray:
    """Class ids 0..classes-1 as a few axis-aligned rectangles on background; every class present."""
    ids = np.zeros((height, width), np.uint8)
    for c in range(1, classes):
        for _ in range(2):
            h, w = int(rng.integers(12, height // 2)), int(rng.integers(12, width // 2))
            y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
            ids[y:y + h, x:x + w] = c
    return ids


def image_for(ids: np.ndarray, rng: np.random.Generator, channels: int = 1) -> np.ndarray:
    """An image where each class has its own brightness (easy to learn), with a little noise."""
    levels = np.array([40, 200, 120, 250, 80], np.float32)
    image = levels[ids] + rng.normal(0, 6, ids.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return np.repeat(image[:, :, None], channels, axis=2) if channels > 1 else image


def write_multiclass_dataset(folder: Path, encode, count: int = 6, classes: int = 3, seed: int = 0,
                             size: tuple[int, int] = (72, 88), mask_ext: str = ".png", writer=None) -> Path:
    """Pairs whose masks hold `encode(ids)`; `writer(path, mask)` overrides how a mask is written."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        ids = class_layout(rng, *size, classes)
        write_image(folder / "images" / f"img_{i}.png", image_for(ids, rng))
        mask_path = folder / "masks" / f"img_{i}{mask_ext}"
        (writer or write_image)(mask_path, encode(ids))
    return folder


def write_binary_dataset(folder: Path, count: int = 6, size: tuple[int, int] = (80, 96), seed: int = 0,
                         foreground: int = 255) -> Path:
    """Pairs from unetcli.demo.make_sample (striped shapes on blotches), masks 0/`foreground`."""
    from unetcli.demo import make_sample

    rng = np.random.default_rng(seed)
    for i in range(count):
        image, mask = make_sample(rng, *size)
        write_image(folder / "images" / f"sample_{i}.png", image)
        write_image(folder / "masks" / f"sample_{i}.png", np.where(mask > 0, foreground, 0).astype(np.uint8))
    return folder


# ------------------------------------------------------------------------------------ tiled against whole


def mosaic(images: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Tile the images into one (height, width) image, every other one mirrored so that edges continue."""
    h, w = images[0].shape[:2]
    rows, k = [], 0
    for r in range(-(-height // h)):
        row = []
        for c in range(-(-width // w)):
            block = images[k % len(images)]
            k += 1
            row.append(block[::-1 if r % 2 else 1, ::-1 if c % 2 else 1])
        rows.append(np.concatenate(row, axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:height, :width])


def predict_one(model: Path, image: Path, out: Path, *options) -> np.ndarray:
    ok(cli("predict", model, image, "-o", out, "--quiet", *options))
    return read_values(out / f"{image.stem}.png")


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.mean(a == b))


def predict_with_probs(model: Path, image: Path, out: Path, *options) -> tuple[np.ndarray, np.ndarray]:
    """The mask and the 16-bit foreground probabilities (value / 65535) that `unetcli predict` writes."""
    ok(cli("predict", model, image, "-o", out, "--quiet", "--save", "mask,probs", *options))
    return read_values(out / f"{image.stem}.png"), read_values(out / f"{image.stem}_probs.png")


# How far one output pixel of the resnet18 U-Net sees: its gradient reaches 281 input pixels up/left and 249
# down/right (measured on a 1024x1024 input). 288 = 9 network strides covers both.
RESNET18_REACH = 288


def inside_every_tile(length: int, origins, tile: int, reach: int = RESNET18_REACH) -> np.ndarray:
    """Along one axis: True where every tile that covers the position also holds the position's whole receptive
    field (or ends where the image ends, as the whole image does). There a tile computes exactly what the whole
    image computes, so tiled and whole logits differ by float rounding only."""
    position = np.arange(length)
    inside = np.ones(length, bool)
    for origin in origins:
        covered = (position >= origin) & (position < origin + tile)
        fits = ((origin == 0) | (position - origin >= reach)) & ((origin + tile >= length) | (origin + tile - position > reach))
        inside &= ~covered | fits
    return inside


def exact_zone(grid) -> np.ndarray:
    """(height, width) True where tiled and whole prediction must agree up to float rounding (see above)."""
    rows = inside_every_tile(grid.height, grid.ys, grid.tile_height)
    cols = inside_every_tile(grid.width, grid.xs, grid.tile_width)
    return np.outer(rows, cols)


def check_tiled_against_whole(whole: tuple[np.ndarray, np.ndarray], tiled: tuple[np.ndarray, np.ndarray],
                              tile: int, overlap: float = 0.25) -> float:
    """The deterministic part of tiled == whole: inside `exact_zone`, the probabilities are the same up to one
    16-bit step and a mask pixel differs only where that step crosses the threshold. Returns the agreement of
    the masks over the whole image (the statistical part, which the caller bounds)."""
    from unetcli.tiling import plan_tiles

    (whole_mask, whole_probs), (tiled_mask, tiled_probs) = whole, tiled
    assert whole_mask.shape == tiled_mask.shape == whole_probs.shape == tiled_probs.shape
    zone = exact_zone(plan_tiles(*whole_mask.shape, tile, overlap))
    assert zone.mean() > 0.15, zone.mean()  # 1024 x 1024 in 512 tiles: four 224 x 224 corners, 19 %; 3 x 100000 strip: 59 %
    steps = np.abs(whole_probs.astype(np.int64) - tiled_probs.astype(np.int64))[zone]
    assert steps.max() <= 1, f"tiled and whole probabilities differ by up to {steps.max()} / 65535 where they must not"
    flipped = zone & (whole_mask != tiled_mask)
    assert np.all(np.abs(whole_probs[flipped] / 65535 - 0.5) <= 1 / 65535), int(flipped.sum())
    return agreement(tiled_mask, whole_mask)


# ------------------------------------------------------------------------------------ objects


def touching_discs(rng: np.random.Generator, size=(80, 96), pairs=3, singles=3) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image, uint16 ids): `pairs` pairs of discs touching along a short line, `singles` isolated discs
    (fewer when they do not fit). Discs are bright in the middle and dim at the rim."""
    height, width = size
    discs: list[tuple[float, float, float]] = []
    for group in [2] * pairs + [1] * singles:
        for _ in range(300):
            r1, r2 = rng.uniform(7, 10, 2)
            y, x = rng.uniform(r1 + 1, height - r1 - 1), rng.uniform(r1 + 1, width - r1 - 1)
            new = [(y, x, r1)]
            if group == 2:
                angle = rng.uniform(0, 2 * np.pi)
                new.append((y + (r1 + r2 - 2.5) * np.sin(angle), x + (r1 + r2 - 2.5) * np.cos(angle), r2))
            inside = all(r + 1 < cy < height - r - 1 and r + 1 < cx < width - r - 1 for cy, cx, r in new)
            if inside and all(np.hypot(cy - oy, cx - ox) > r + orr + 4 for cy, cx, r in new for oy, ox, orr in discs):
                discs += new
                break
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    scores = np.stack([np.hypot(yy - cy, xx - cx) / r for cy, cx, r in discs])
    best = scores.min(axis=0)
    ids = np.where(best < 1, scores.argmin(axis=0) + 1, 0).astype(np.uint16)
    image = np.where(best < 1, 90 + 130 * np.sqrt(np.clip(1 - best**2, 0, 1)), 40) + rng.normal(0, 6, ids.shape)
    return np.clip(image, 0, 255).astype(np.uint8), ids


def write_label_dataset(folder, count=4, seed=0, ext=".png", dtype=np.uint16, **layout):
    """DATA/images + DATA/masks holding instance label images (ids 1..N per image, N varies)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, ids = touching_discs(rng, pairs=3 + i % 2, **layout)
        write_image(folder / "images" / f"cells_{i}.png", image)
        path = folder / "masks" / f"cells_{i}{ext}"
        if ext == ".tif":
            import tifffile

            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, ids.astype(dtype), compression="zlib")
        else:
            write_image(path, ids.astype(dtype))
    return folder
