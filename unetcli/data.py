"""Find image/mask pairs in folders, read and scan them: sizes, channels, mask values, problems."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .channels import AlphaCheck, alpha_range, check_alpha, match_channels
from .errors import DataError, UsageError
from .images import RawMask, exif_rotates, is_image_file, read_image, read_mask, to_unit_range
from .instance_masks import instance_signs, object_ids, read_object_masks
from .mask_modes import infer_class_map
from .masks import IGNORE_ID, ClassMap, MaskStats, mask_stats

IMAGE_FOLDER_NAMES = ("images", "image", "imgs", "img")
MASK_FOLDER_NAMES = ("masks", "mask", "labels", "label", "gt", "annotations")
MASK_STEM_SUFFIXES = ("", "_mask", "-mask", "_label", "_labels", "_gt", "_seg")


@dataclass(frozen=True)
class Pair:
    stem: str
    image: Path
    mask: Path


def resolve_layout(data: Path | None, images: Path | None = None, masks: Path | None = None) -> tuple[Path, Path]:
    """The images and masks folders: DATA/images + DATA/masks (or common aliases), or given explicitly. A DATA
    in the DSB2018 layout (see `object_layout`) gives (DATA, DATA), which `find_pairs` pairs per image folder."""
    if images is not None and masks is not None:
        folders = (Path(images), Path(masks))
    elif data is None:
        raise UsageError("give a DATA folder (holding images/ and masks/) or both --images and --masks")
    else:
        data = Path(data)
        if not data.is_dir():
            raise DataError(f"{data}: no such folder; DATA must be a folder holding images/ and masks/")
        found_images = images or next((data / n for n in IMAGE_FOLDER_NAMES if (data / n).is_dir()), None)
        found_masks = masks or next((data / n for n in MASK_FOLDER_NAMES if (data / n).is_dir()), None)
        if found_images is None or found_masks is None:
            if images is None and masks is None and object_layout(data):
                return data, data
            missing = "images/" if found_images is None else "masks/"
            raise DataError(
                f"{data}: no {missing} folder inside; expected DATA/images and DATA/masks "
                "(or pass --images DIR --masks DIR)"
            )
        folders = (Path(found_images), Path(found_masks))
    for folder in folders:
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder")
    return folders


def list_image_files(folder: Path) -> list[Path]:
    """Image files directly inside a folder (not recursive, hidden files skipped), sorted by name."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise DataError(f"{folder}: cannot list the folder ({err.strerror})") from None
    files = []
    for entry in entries:
        path = Path(entry.path)
        try:
            regular = entry.is_file()  # follows symlinks; a symlink loop raises or returns False
        except OSError:
            regular = False
        if regular and is_image_file(path):
            files.append(path)
    return files


def _by_stem(files: list[Path], role: str) -> dict[str, Path]:
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise DataError(
                f"{path}: two {role} files share the name {path.stem!r} ({stems[path.stem].name} and {path.name}); "
                "pairs match by file name without extension, so keep one"
            )
        stems[path.stem] = path
    return stems


def _short_list(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def find_pairs(images_dir: Path, masks_dir: Path) -> list[Pair]:
    """Match the image files of two folders by file stem (see `pair_files`); one folder in the DSB2018 layout
    (`object_layout`) pairs each DATA/<id>/images/ file with its DATA/<id>/masks/ folder."""
    if Path(images_dir) == Path(masks_dir):
        folders = object_layout(Path(images_dir))
        if folders:
            return object_pairs(folders)
    return pair_files(list_image_files(images_dir), list_image_files(masks_dir), images_dir, masks_dir)


def pair_files(image_files: list[Path], mask_files: list[Path], images_dir: Path, masks_dir: Path) -> list[Pair]:
    """Match images to masks by file stem (extensions may differ; a mask may add _mask/_label/_gt)."""
    images = _by_stem(image_files, "image")
    masks = _by_stem(mask_files, "mask")
    if not images:
        raise DataError(f"{images_dir}: no image files found (looked for .png, .tif, .jpg and other image types)")
    pairs, used = [], set()
    for stem, image in images.items():
        mask_stem = next((stem + s for s in MASK_STEM_SUFFIXES if stem + s in masks and stem + s not in used), None)
        if mask_stem is not None:
            used.add(mask_stem)
            pairs.append(Pair(stem, image, masks[mask_stem]))
    lonely_images = sorted(p.name for s, p in images.items() if s not in {q.stem for q in pairs})
    lonely_masks = sorted(masks[s].name for s in masks if s not in used)
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(f"{len(lonely_images)} image(s) without a mask in {masks_dir}: {_short_list(lonely_images)}")
        if lonely_masks:
            parts.append(f"{len(lonely_masks)} mask(s) without an image in {images_dir}: {_short_list(lonely_masks)}")
        raise DataError(
            "; ".join(parts) + ". Pairs match by file name without extension; rename or remove the odd files"
        )
    return pairs


def object_layout(data: Path) -> list[Path] | None:
    """The per-image folders of the DSB2018 layout, DATA/<id>/images/<id>.png + DATA/<id>/masks/*.png (one binary
    mask per object), or None. The rule: DATA holds no images/ or masks/ folder (checked first by resolve_layout)
    and its subfolders (hidden ones skipped) hold images/ folders: all of them, or a DataError names the others."""
    try:
        subfolders = sorted(Path(e.path) for e in os.scandir(data) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return None
    laid_out = [folder for folder in subfolders if (folder / "images").is_dir()]
    if not laid_out:
        return None
    odd = [folder.name for folder in subfolders if folder not in laid_out]
    if odd:
        raise DataError(
            f"{data}: laid out as one folder per image (<id>/images/ + <id>/masks/, as in DSB2018), but "
            f"{_short_list(odd)} hold no images/ folder; move them out of {data}"
        )
    return laid_out


def object_pairs(folders: list[Path]) -> list[Pair]:
    """One pair per DSB2018 image folder: its one image file and its masks/ folder (read by read_object_masks)."""
    pairs, lonely = [], []
    for folder in folders:
        images = list_image_files(folder / "images")
        if len(images) != 1:
            raise DataError(f"{folder / 'images'}: holds {len(images)} image files; in this layout each image has its "
                            "own folder (<id>/images/<id>.png with <id>/masks/)")
        if not (folder / "masks").is_dir():
            lonely.append(folder.name)
        pairs.append(Pair(folder.name, images[0], folder / "masks"))
    if lonely:
        raise DataError(f"{len(lonely)} image folder(s) without a masks/ folder: {_short_list(lonely)}; "
                        "each <id>/ needs masks/ holding one mask file per object")
    return pairs


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded random split; at least one validation pair when val_fraction > 0 and there are 2+ pairs."""
    if not 0 <= val_fraction < 1:
        raise UsageError(f"--val-split {val_fraction} must be in [0, 1)")
    if val_fraction == 0 or len(pairs) < 2:
        return list(pairs), []
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    n_val = max(1, round(len(pairs) * val_fraction))
    val = sorted(shuffled[:n_val], key=lambda p: p.stem)
    train = sorted(shuffled[n_val:], key=lambda p: p.stem)
    return train, val


@dataclass
class Sample:
    """One decoded pair. `image` is kept in its stored dtype; `mask` holds class ids once decoded."""

    pair: Pair
    image: np.ndarray
    raw_mask: RawMask
    mask: np.ndarray | None = None
    objects: np.ndarray | None = None  # instance masks: the object ids (0 = background), for the border weight map


def read_sample(pair: Pair) -> Sample:
    image = read_image(pair.image)
    raw = read_object_masks(pair.mask, image.shape[:2]) if pair.mask.is_dir() else read_mask(pair.mask)
    if raw.values.shape[:2] != image.shape[:2]:
        h, w = image.shape[:2]
        mh, mw = raw.values.shape[:2]
        hint = "masks must have exactly the size of their image"
        if (mh, mw) == (w, h) and exif_rotates(pair.image):
            hint = (f"{pair.image.name} is read turned by its EXIF orientation tag, as viewers show it; if the mask "
                    "was drawn on the unturned pixels, turn the mask too, or remove the image's tag (exiftool -Orientation= FILE)")
        raise DataError(f"{pair.mask}: mask is {mw}x{mh} but its image {pair.image.name} is {w}x{h}; {hint}")
    return Sample(pair, image, raw)


@dataclass
class DatasetScan:
    """What `unetcli check` reports and `train` builds on."""

    samples: list[Sample]
    problems: list[str] = field(default_factory=list)
    class_map: ClassMap | None = None
    in_channels: int | None = None
    class_pixels: list[int] = field(default_factory=list)
    ignored_pixels: int = 0  # pixels of the ignored mask value (left out of loss and metrics)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    alpha: AlphaCheck | None = None  # RGBA images: whether their alpha is one constant (then dropped) or varies
    notes: list[str] = field(default_factory=list)  # e.g. masks that look like object ids (see instance_masks)

    @property
    def alpha_dropped(self) -> float | None:
        """The constant alpha value left out of the model's input (see ModelMeta.alpha_dropped), or None."""
        return self.alpha.value if self.alpha is not None and self.alpha.dropped else None

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [s.image.shape[:2] for s in self.samples]


def scan_dataset(
    pairs: list[Pair],
    *,
    mask_mode: str = "auto",
    ignore_value: int | None = None,
    class_map_file: Path | None = None,
    num_classes: int | None = None,
    class_map: ClassMap | None = None,
    in_channels: int | None = None,
) -> DatasetScan:
    """Read every pair, collect every problem, infer (or apply) the class map and channel count. With
    `in_channels` (a model's, e.g. for validation) each image is fitted to it as predict fits its inputs."""
    scan = DatasetScan(samples=[])
    for pair in pairs:
        try:
            scan.samples.append(read_sample(pair))
        except DataError as err:
            scan.problems.append(str(err))
    if not scan.samples:
        return scan
    _settle_channels(scan, in_channels)
    if not scan.samples:  # none fitted the given channel count
        return scan
    stats: list[MaskStats] = [mask_stats(s.pair.mask, s.raw_mask) for s in scan.samples]
    try:
        scan.class_map = class_map or infer_class_map(stats, mask_mode, ignore_value, class_map_file=class_map_file,
                                                        num_classes=num_classes)
    except DataError as err:
        scan.problems.append(str(err))
        return scan
    if class_map is None and class_map_file is None and mask_mode == "auto":
        signs = instance_signs(stats, ignore_value)
        scan.notes += [signs.note(scan.class_map.mode == "instances")] if signs.looks_like_ids else []
    counts = np.zeros(256, np.int64)
    for sample in scan.samples:
        try:
            sample.mask = scan.class_map.decode(sample.raw_mask, sample.pair.mask)
        except DataError as err:
            scan.problems.append(str(err))
            continue
        if scan.class_map.mode == "instances":
            sample.objects = object_ids(sample.raw_mask, scan.class_map.ignore_value)
        counts += np.bincount(sample.mask.ravel(), minlength=256)
    scan.class_pixels = [int(c) for c in counts[: scan.class_map.num_classes]]
    scan.ignored_pixels = int(counts[IGNORE_ID])
    if scan.in_channels is not None:
        scan.mean, scan.std = channel_statistics([s.image for s in scan.samples])
    return scan


def _settle_channels(scan: DatasetScan, in_channels: int | None) -> None:
    """Set the model's channel count: `in_channels` with every image fitted to it (`match_channels`), or the
    images' common count, less an alpha channel that is one constant in every image (checked per image by
    its min and max: one pass over the alpha plane of images that are decoded anyway)."""
    if in_channels is not None:
        fitted = []
        for sample in scan.samples:
            try:
                sample.image = match_channels(sample.image, in_channels, sample.pair.image)
                fitted.append(sample)
            except DataError as err:
                scan.problems.append(str(err))
        scan.samples, scan.in_channels = fitted, in_channels
        return
    channels: dict[int, list[str]] = {}
    for sample in scan.samples:
        channels.setdefault(sample.image.shape[2], []).append(sample.pair.image.name)
    if len(channels) > 1:
        common = max(channels, key=lambda c: len(channels[c]))
        odd = [f"{_short_list(names, 3)} ({c} channel{'' if c == 1 else 's'})" for c, names in channels.items() if c != common]
        scan.problems.append(
            f"images mix channel counts: most have {common}, but {'; '.join(odd)}; "
            "convert them all to the same (e.g. all gray or all RGB)"
        )
        return
    scan.in_channels = next(iter(channels))
    if scan.in_channels == 4:
        scan.alpha = check_alpha([alpha_range(s.image) for s in scan.samples])
        if scan.alpha.dropped:
            for sample in scan.samples:
                sample.image = match_channels(sample.image, 3, sample.pair.image)
            scan.in_channels = 3


def channel_statistics(images: list[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units over all pixels of all images (normalisation constants)."""
    total = sum_sq = 0.0
    pixels = 0
    for image in images:
        unit = to_unit_range(image).reshape(-1, image.shape[2]).astype(np.float64)
        total = total + unit.sum(axis=0)
        sum_sq = sum_sq + np.square(unit).sum(axis=0)
        pixels += unit.shape[0]
    mean = total / pixels
    std = np.sqrt(np.maximum(sum_sq / pixels - mean**2, 0.0))
    std = np.where(std < 1e-6, 1.0, std)
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def require_clean(scan: DatasetScan, what: str) -> None:
    """Raise the first problem of a scan (with a count of the rest) for commands that cannot go on."""
    if scan.problems:
        rest = len(scan.problems) - 1
        suffix = f" (and {rest} more problem(s); run `unetcli check` on the {what} data to list them all)" if rest else ""
        raise DataError(scan.problems[0] + suffix)
    if not scan.samples:
        raise DataError(f"no readable image/mask pairs in the {what} data")
