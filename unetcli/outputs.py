"""What `predict` writes for each input: the output files' names, the checks before any is written, and the
writer that turns class ids into the user's mask values, colour, overlay and probability PNGs."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .display import class_outlines, display_levels, outline_width
from .errors import OutputError, UnetcliError, UsageError
from .images import remove_stale_temp_files, write_png

if TYPE_CHECKING:
    from .predictor import Predictor

SAVE_KINDS = ("mask", "color", "overlay", "probs")
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
        raise UsageError(f"--save {','.join(save)}: nothing left to write; list color, overlay or probs")
    return kinds


@dataclass(frozen=True)
class PredictOptions:
    out_dir: Path
    save: tuple[str, ...] = ("mask",)  # as written; resolved by resolve_save (the mask is always in, unless -mask)
    skip_existing: bool = False
    shard: tuple[int, int] = (1, 1)
    overlay_alpha: float = 0.4

    def __post_init__(self) -> None:
        object.__setattr__(self, "save", resolve_save(self.save))


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

    def to_json(self) -> str:
        data = {"input": str(self.input), "status": self.status, "outputs": self.outputs}
        if self.status == "ok":
            data.update(classes_present=self.classes_present, foreground_fraction=self.foreground_fraction)
        if self.warning:
            data["warning"] = self.warning
        if self.error:
            data["error"] = self.error
        return json.dumps(data)


def check_save_kinds(save: tuple[str, ...]) -> None:
    """Raise UsageError unless resolve_save accepts `save` (PredictOptions resolves its own)."""
    resolve_save(save)


def output_paths(path: Path, options: PredictOptions, probability_channels: int = 1) -> dict[str, Path]:
    """kind -> file. --save probs writes `<stem>_probs.png` for a binary model (the foreground's probability)
    and `<stem>_probs_<class id>.png` per class otherwise."""
    suffix = {"mask": "", "color": "_color", "overlay": "_overlay"}
    paths = {}
    for kind in options.save:
        if kind != "probs":
            paths[kind] = options.out_dir / f"{path.stem}{suffix[kind]}.png"
        elif probability_channels == 1:
            paths["probs"] = options.out_dir / f"{path.stem}_probs.png"
        else:
            paths.update({f"probs_{k}": options.out_dir / f"{path.stem}_probs_{k}.png" for k in range(probability_channels)})
    return paths


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


def prepare_out_dir(out_dir: Path) -> None:
    """Create the output folder and check that it is writable, before any input is predicted."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{out_dir}: cannot create the output folder ({err.strerror})") from None
    if not os.access(out_dir, os.W_OK):
        raise OutputError(f"{out_dir}: the output folder is not writable; choose another -o folder")
    remove_stale_temp_files(out_dir)  # left by a predict that was killed while writing


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
    `probs`: the probability maps when options.save has 'probs'."""
    class_map = predictor.class_map
    targets = output_paths(path, options, predictor.probability_channels)
    try:
        for kind, target in targets.items():
            if kind.startswith("probs"):
                write_png(target, probs[0 if kind == "probs" else int(kind.removeprefix("probs_"))])
            elif kind == "mask":
                palette = class_map.palette if class_map.mode == "palette" else None
                write_png(target, class_map.encode(ids), palette)
            elif kind == "color":
                write_png(target, class_map.colourise(ids))
            else:
                write_png(target, overlay(image, class_map.overlay_colours, ids, alpha=options.overlay_alpha))
    except UnetcliError as err:
        return PredictResult(path, "error", error=str(err), exit_code=err.exit_code)
    present = np.flatnonzero(np.bincount(ids.ravel(), minlength=class_map.num_classes))
    fraction = float((ids > 0).mean())
    warning = None
    if fraction == 0.0:
        warning = f"{path}: the prediction is entirely {class_map.classes[0].name}; check that the image resembles the training data"
    return PredictResult(path, "ok", {k: str(v) for k, v in targets.items()}, classes_present=[class_map.classes[i].name for i in present],
                         foreground_fraction=round(fraction, 6), warning=warning)
