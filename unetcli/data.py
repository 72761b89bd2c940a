"""Find image/mask pairs in folders, read and scan them: sizes, channels, mask values, problems."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError, UsageError
from .images import RawMask, exif_rotates, is_image_file, read_image, read_mask
from .instance_masks import read_object_masks

IMAGE_FOLDER_NAMES = ("images", "image", "imgs", "img")
MASK_FOLDER_NAMES = ("masks", "mask", "labels", "label", "gt", "annotations")
MASK_STEM_SUFFIXES = ("", "_mask", "-mask", "_label", "_labels", "_gt", "_seg")


@dataclass(frozen=True)
class Pair:
    stem: str
    image: Path
    mask: Path
    page: int | None = None  # a page of a TIFF stack (stacks.py): image page `page`, stem `<stem>[<page>]`
    mask_page: int | None = None  # the mask stack's page; None: `mask` is one image (or a per-page mask file)


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


def list_image_files(folder: Path, *, keep_unreadable: bool = False) -> list[Path]:
    """Image files directly inside a folder (not recursive, hidden files skipped), sorted by name. Entries named
    like images that are no readable file (a dangling symlink, a folder `x.png/`) are not skipped silently: each
    is a warning, or with `keep_unreadable` kept in the list, for a caller that reports each input's failure
    (predict)."""
    import warnings

    from .errors import UnetcliWarning

    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise DataError(f"{folder}: cannot list the folder ({err.strerror})") from None
    files = []
    for entry in entries:
        path = Path(entry.path)
        if not is_image_file(path):
            continue
        try:
            regular = entry.is_file()  # follows symlinks; a symlink loop raises or returns False
        except OSError:
            regular = False
        if regular or keep_unreadable:
            files.append(path)
            continue
        what = ("a symbolic link to a missing file" if entry.is_symlink() and not path.exists()
                else "a folder" if entry.is_dir() else "not a regular file")
        warnings.warn(UnetcliWarning(f"{path}: skipped, {what} named like an image; remove or rename it"), stacklevel=2)
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
        elif (Path(masks_dir) / stem).is_dir():  # a stack's folder of per-page masks (stacks.expand_stacks)
            pairs.append(Pair(stem, image, Path(masks_dir) / stem))
    paired = {q.stem for q in pairs}
    lonely_images = sorted(p.name for s, p in images.items() if s not in paired)
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
    from .stacks import expand_stacks

    return expand_stacks(pairs)


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


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int, *, fold: int = 0,
                folds: int = 1) -> tuple[list[Pair], list[Pair]]:
    """A seeded random split; at least one validation pair when val_fraction > 0 and there are 2+ pairs. With
    `fold` k of `folds` K (cross-validation) the validation pairs are every K-th pair of the same seeded shuffle from
    the k-th on instead (val_fraction unused): the K folds' validation sets partition the pairs, sizes within one."""
    if not 0 <= val_fraction < 1:
        raise UsageError(f"--val-split {val_fraction} must be in [0, 1)")
    if folds > 1 and not fold:  # a single run given --folds K: cross-validation is folds.train_folds' job
        raise UsageError(f"--folds {folds} without --fold: this trains or plans one run; add --fold k (1..{folds}) for one "
                         f"fold, or train them all with `unetcli train --folds {folds}` (folds.train_folds in Python)")
    if fold and len(pairs) < folds:
        raise UsageError(f"--folds {folds}: the data has only {len(pairs)} pairs; use at most {len(pairs)} folds")
    from .stacks import split_stack_pages  # a stack's pages split in blocks, not at random (see there)

    stack_train, stack_val = split_stack_pages([p for p in pairs if p.page is not None], val_fraction, fold, folds)
    pairs = [p for p in pairs if p.page is None]
    if not fold and (val_fraction == 0 or len(pairs) < 2):
        return list(pairs) + stack_train, stack_val
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    n_val = max(1, round(len(pairs) * val_fraction))
    held_out = shuffled[fold - 1::folds] if fold else shuffled[:n_val]
    val = sorted(held_out + stack_val, key=lambda p: p.stem)
    train = sorted([*(set(shuffled) - set(held_out)), *stack_train], key=lambda p: p.stem)
    return train, val


@dataclass
class Sample:
    """One decoded pair. `image` is kept in its stored dtype; `mask` holds class ids once decoded."""

    pair: Pair
    image: np.ndarray
    raw_mask: RawMask
    mask: np.ndarray | None = None
    objects: np.ndarray | None = None  # instance masks: the object ids (0 = background), for the border weight map


def read_pair_mask(pair: Pair, shape: tuple[int, ...]) -> RawMask:
    """A pair's mask as stored: one file (or a stack's page), or a folder of one mask per object."""
    return read_object_masks(pair.mask, shape[:2]) if pair.mask.is_dir() else read_mask(pair.mask, pair.mask_page)


def read_sample(pair: Pair) -> Sample:
    image = read_image(pair.image, pair.page)
    raw = read_pair_mask(pair, image.shape)
    if raw.values.shape[:2] != image.shape[:2]:
        h, w = image.shape[:2]
        mh, mw = raw.values.shape[:2]
        hint = "masks must have exactly the size of their image"
        if (mh, mw) == (w, h) and exif_rotates(pair.image):
            hint = (f"{pair.image.name} is read turned by its EXIF orientation tag, as viewers show it; if the mask "
                    "was drawn on the unturned pixels, turn the mask too, or remove the image's tag (exiftool -Orientation= FILE)")
        raise DataError(f"{pair.mask}: mask is {mw}x{mh} but its image {pair.image.name} is {w}x{h}; {hint}")
    return Sample(pair, image, raw)
