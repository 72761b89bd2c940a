"""What `predict` writes for each input: the output files' names, the checks before any is written, and the
writer that turns class ids into the user's mask values, colour, overlay and probability PNGs, and objects
(`--save instances`: `<stem>_instances.tif` and its rows of OUT/objects.csv)."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .display import class_outlines, display_levels, outline_width
from .doubt import Doubt
from .errors import OutputError, UnetcliError, UsageError
from .geotiff import tiff_bytes
from .images import remove_stale_temp_files, write_bytes_atomic, write_png
from .instances import CSV_COLUMNS, InstanceOptions, label_instances, object_classes, object_rows
from .stacks import tiff_layout, tiff_outputs

if TYPE_CHECKING:
    from .predictor import Predictor

SUFFIXES = {"mask": "", "color": "_color", "overlay": "_overlay", "probs": "_probs", "instances": "_instances"}
SAVE_KINDS = tuple(SUFFIXES)
SAVE_SYNONYMS = {"colour": "color"}


def resolve_save(save: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """--save as written -> the kinds to write, mask first: the mask always, unless listed as `-mask`; the other
    kinds add files to it. `colour` means `color`."""
    listed, removed = [], set()
    for word in (w.strip().lower() for w in save if w.strip()):
        kind = SAVE_SYNONYMS.get(word.lstrip("-"), word.lstrip("-"))
        if kind not in SAVE_KINDS:
            raise UsageError(f"--save {','.join(save)}: {word!r} is none of {', '.join(SAVE_KINDS)} "
                             "(-mask leaves the mask out)")
        if word.startswith("-"):
            removed.add(kind)
        else:
            listed.append(kind)
    both = removed.intersection(listed)
    if both:
        raise UsageError(f"--save {','.join(save)}: {', '.join(sorted(both))} both listed and left out")
    kinds = tuple(k for k in SAVE_KINDS if k in listed or (k == "mask" and k not in removed))
    if not kinds:
        raise UsageError(f"--save {','.join(save)}: nothing left to write; list color, overlay, probs or instances")
    return kinds


@dataclass(frozen=True)
class PredictOptions:
    out_dir: Path
    save: tuple[str, ...] = ("mask",)  # as written; resolved by resolve_save (the mask is always in, unless -mask)
    skip_existing: bool = False
    shard: tuple[int, int] = (1, 1)
    overlay_alpha: float = 0.4
    instances: InstanceOptions = field(default_factory=InstanceOptions)  # --objects, --split, --min-size
    review: int | None = None  # --review N: OUT/review.png and review.txt of the N most doubtful images; None: none

    def __post_init__(self) -> None:
        object.__setattr__(self, "save", resolve_save(self.save))
        if self.review is not None and (isinstance(self.review, bool) or not isinstance(self.review, int) or self.review < 1):
            raise UsageError(f"--review {self.review!r}: give the number of most doubtful images to show (1 or more)")


@dataclass
class PredictResult:
    input: Path
    status: str  # ok | skipped | error
    outputs: dict[str, str] = field(default_factory=dict)
    classes_present: list[str] = field(default_factory=list)
    foreground_fraction: float | None = None
    warning: str | None = None
    error: str | None = None
    exit_code: int = 0
    objects: dict[str, int] | None = None  # --save instances: objects per object class
    pages: int | None = None  # a stack: its pages (each output is a stack of as many)
    doubt: Doubt | None = None  # predicted images: how much the prediction deserves a human look (doubt.py)
    thumbnail: np.ndarray | None = field(default=None, repr=False)  # --review: a small overlay (not in the JSON)

    def to_json(self) -> str:
        data = {"input": str(self.input), "status": self.status, "outputs": self.outputs}
        if self.status == "ok":
            data.update(classes_present=self.classes_present, foreground_fraction=self.foreground_fraction)
        if self.doubt is not None:
            data["doubt"] = self.doubt.to_dict()
        if self.objects is not None:
            data["objects"] = self.objects
        if self.pages is not None:
            data["pages"] = self.pages
        if self.warning:
            data["warning"] = self.warning
        if self.error:
            data["error"] = self.error
        return json.dumps(data)


def check_save_kinds(save: tuple[str, ...]) -> None:
    """Raise UsageError unless resolve_save accepts `save` (PredictOptions resolves its own)."""
    resolve_save(save)


OBJECTS_CSV = "objects.csv"  # OUT/objects.csv: one row per object of every `<stem>_instances.tif` in OUT
OBJECT_ROWS = ".objects"  # OUT/.objects/<stem>_instances.csv: each image's rows, from which objects.csv is built


def output_paths(path: Path, options: PredictOptions, probability_channels: int = 1) -> dict[str, Path]:
    """kind -> file. --save probs writes `<stem>_probs.png` for a binary model (the foreground's probability)
    and `<stem>_probs_<class id>.png` per class otherwise; --save instances `<stem>_instances.tif` and, as kind
    'objects', its rows for objects.csv in OUT/.objects/ (written first, so the .tif implies them). Stacks and
    GeoTIFFs get TIFFs (.tif) instead of PNGs: stacks of pages (stacks.py), or carrying the georeferencing (geotiff.py)."""
    picture = ".tif" if tiff_outputs(path) else ".png"
    paths = {}
    for kind in options.save:
        stem = f"{path.stem}{SUFFIXES[kind]}"
        if kind == "instances":
            paths["objects"] = options.out_dir / OBJECT_ROWS / f"{stem}.csv"
            paths[kind] = options.out_dir / f"{stem}.tif"
        elif kind != "probs" or probability_channels == 1:
            paths[kind] = options.out_dir / f"{stem}{picture}"
        else:
            paths.update({f"probs_{k}": options.out_dir / f"{stem}_{k}{picture}" for k in range(probability_channels)})
    return paths


def listed_outputs(targets: dict[str, Path]) -> dict[str, str]:
    """The files a result names (not the rows kept for objects.csv)."""
    return {kind: str(target) for kind, target in targets.items() if kind != "objects"}


def check_collisions(targets: dict[Path, dict[str, Path]]) -> None:
    """`targets`: each input's output files (see output_paths). Two inputs must not write the same file, and no
    output may be an input."""
    writers: dict[Path, Path] = {}  # output file -> the input that writes it (a.png and a.tif; a.png's
    for path, outputs in targets.items():  # a_color.png and an input called a_color.png)
        for target in outputs.values():
            if target in writers and writers[target] != path:
                raise UsageError(
                    f"{path} and {writers[target]} would both write {target.name}; "
                    "outputs are named after the input file name, so predict them into different -o folders"
                )
            writers[target] = path
    inputs = {p.resolve() for p in targets if p.exists()}
    for outputs in targets.values():
        for target in outputs.values():
            if target.resolve() in inputs:
                raise OutputError(f"{target}: the output would overwrite an input image; choose another -o folder")


def prepare_out_dir(out_dir: Path, objects: bool = False) -> None:
    """Create the output folder (and with `objects`, OUT/.objects/) and check that it is writable, before any
    input is predicted."""
    folders = (out_dir, out_dir / OBJECT_ROWS) if objects else (out_dir,)
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{folder}: cannot create the output folder ({err.strerror})") from None
        if not os.access(folder, os.W_OK):
            raise OutputError(f"{folder}: the output folder is not writable; choose another -o folder")
        remove_stale_temp_files(folder)  # left by a predict that was killed while writing


def check_objects(predictor: Predictor, options: PredictOptions) -> None:
    """--objects names classes of this model (UsageError otherwise), checked before anything is written."""
    if "instances" in options.save:
        object_classes(predictor.class_map, options.instances.objects)


def csv_bytes(rows: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def write_instances(predictor: Predictor, path: Path, ids: np.ndarray, probs: np.ndarray | None, targets: dict[str, Path],
                    options: PredictOptions) -> dict[str, int]:
    """Label the objects of one prediction, write their rows for objects.csv and then `<stem>_instances.tif`
    (both atomically, in that order). Returns the objects per class."""
    class_map = predictor.class_map
    found = label_instances(ids, class_map, options.instances)
    write_bytes_atomic(targets["objects"], csv_bytes(object_rows(found, class_map, probs, str(path))))
    write_bytes_atomic(targets["instances"], tiff_bytes(found.image(), tags=tiff_layout(path).geo_tags))
    return found.counts(class_map, object_classes(class_map, options.instances.objects))


def write_objects_table(out_dir: Path) -> Path:
    """OUT/objects.csv from the rows of every `<stem>_instances.tif` in OUT (kept in OUT/.objects/), in file name
    order, written atomically: a batch rerun after an interruption ends with exactly one row per object."""
    rows = []
    for part in sorted((out_dir / OBJECT_ROWS).glob("*_instances.csv")):
        if (out_dir / f"{part.stem}.tif").exists():  # rows of a deleted label image are left out
            with open(part, newline="") as handle:
                rows.extend(csv.DictReader(handle))
    target = out_dir / OBJECTS_CSV
    write_bytes_atomic(target, csv_bytes(rows))
    return target


def overlay(image: np.ndarray, colours: np.ndarray, ids: np.ndarray, *, alpha: float) -> np.ndarray:
    """The image as RGB, each class but 0 blended in at `alpha` in its colour (`colours`: N x 3, one per class id)
    and outlined in it, 1-2 pixels wide (see docs/decisions.md)."""
    base = display_levels(image)
    paint = colours[ids].astype(np.float32)
    blended = np.where((ids > 0)[:, :, None], base * (1 - alpha) + paint * alpha, base)
    edges = class_outlines(ids, outline_width(*ids.shape[:2]))
    blended[edges] = paint[edges]
    return blended.round().astype(np.uint8)


def write_outputs(predictor: Predictor, path: Path, image: np.ndarray, *, ids: np.ndarray, probs: np.ndarray | None,
                  options: PredictOptions) -> PredictResult:
    """Write one input's files (see output_paths); a failed write gives an error result, not an exception.
    `probs`: the probability maps when options.save has 'probs' or 'instances' (for the objects' mean probability)."""
    class_map = predictor.class_map
    targets = output_paths(path, options, predictor.probability_channels)
    objects = None
    try:
        for kind, target in targets.items():
            if kind == "instances":
                objects = write_instances(predictor, path, ids, probs, targets, options)
            elif kind != "objects":  # (objects: written by write_instances, before the label image)
                array, palette = output_page(kind, predictor, image, ids, probs, options)
                if target.suffix == ".tif":
                    write_bytes_atomic(target, tiff_bytes(array, palette=palette, tags=tiff_layout(path).geo_tags))
                else:
                    write_png(target, array, palette)
    except UnetcliError as err:
        return PredictResult(path, "error", error=str(err), exit_code=err.exit_code)
    return finished(path, class_map, np.bincount(ids.ravel(), minlength=class_map.num_classes), targets, objects)


def output_page(kind: str, predictor: Predictor, image: np.ndarray, ids: np.ndarray, probs: np.ndarray | None,
                options: PredictOptions) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """The pixels of one output kind (mask, color, overlay, probs, probs_<k>) of one prediction, and the palette a
    palette mask keeps: for single files and for the pages of output stacks (stack_outputs.py)."""
    class_map = predictor.class_map
    if kind.startswith("probs"):
        return probs[0 if kind == "probs" else int(kind.removeprefix("probs_"))], None
    if kind == "mask":
        return class_map.encode(ids), class_map.palette if class_map.mode == "palette" else None
    if kind == "color":
        return class_map.colourise(ids), None
    return overlay(image, class_map.overlay_colours, ids, alpha=options.overlay_alpha), None


def finished(path: Path, class_map, class_counts: np.ndarray, targets: dict[str, Path], objects: dict[str, int] | None,
             pages: int | None = None) -> PredictResult:
    """The result of an input whose files are written: `class_counts`, its predicted pixels per class id."""
    present = np.flatnonzero(class_counts)
    fraction = float(class_counts[1:].sum() / max(1, class_counts.sum()))
    warning = None
    if fraction == 0.0:
        warning = f"{path}: the prediction is entirely {class_map.classes[0].name}; check that the image resembles the training data"
    return PredictResult(path, "ok", listed_outputs(targets), classes_present=[class_map.classes[i].name for i in present],
                         foreground_fraction=round(fraction, 6), warning=warning, objects=objects, pages=pages)
