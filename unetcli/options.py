"""Typed options of the commands, validated before any data is read."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import TRAIN_STATE_FILE
from .errors import UsageError


@dataclass(frozen=True)
class TrainOptions:
    out: Path  # run folder: model-best/, model-last/, history.csv, run.yaml
    data: Path | None = None  # folder with images/ and masks/
    images: Path | None = None  # or explicit folders
    masks: Path | None = None
    val: Path | None = None  # separate validation folder; else a seeded split
    val_split: float = 0.2
    encoder: str = "resnet34"
    encoder_weights: str = "none"  # 'none' = random init, offline; e.g. 'imagenet' downloads
    classes: int | None = None  # None = from the masks
    mask_mode: str = "auto"
    ignore_index: int | None = None  # a mask value whose pixels are left out of loss and metrics
    class_map_file: Path | None = None
    epochs: int = 40
    batch_size: int = 8
    crop: int = 256
    lr: float = 1e-3
    loss: str = "dice+ce"
    class_weights: str = "none"  # none | auto (inverse sqrt frequency) | comma list, one per class
    border_weight: bool = False  # the U-Net paper's weight map on the cross-entropy term
    border_w0: float = 10.0
    border_sigma: float = 5.0
    consistency: float = 0.0  # weight of the flip/rotation invariance regulariser; 0 = off
    foreground_crops: float = 0.3  # share of crops that contain foreground
    augment: str = "default"
    samples_per_epoch: int = 256  # random crops per epoch (at least one per image)
    patience: int | None = None  # stop after this many epochs without improvement
    min_delta: float = 0.0
    time_limit: float | None = None  # seconds; the LR schedule follows the clock when set
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None  # DataLoader workers; None = 0 on CPU, 4 on GPU
    compile: bool = False  # torch.compile the training forward/backward; eager if compiling fails
    overwrite: bool = False
    resume: bool = False  # continue `out` from its model-last/ (see `resume_options`)


# Options a resumed run may change; everything else must stay as the run was started.
RESUMABLE_CHANGES = ("epochs", "patience", "min_delta", "time_limit", "device", "precision", "workers", "compile")


def resume_options(run: Path, changes: dict) -> TrainOptions:
    """The options a run was started with, plus the allowed `changes`; other changes are refused."""
    from .checkpoint import read_meta, recover_folder

    run = Path(run)
    last = run / "model-last"
    if run.is_dir():  # repair a save that was killed half-way (SIGKILL, power loss)
        recover_folder(last)
        recover_folder(run / "model-best")
    if not (last / TRAIN_STATE_FILE).is_file():
        raise UsageError(f"{run}: nothing to resume (no model-last/{TRAIN_STATE_FILE}); start a new run without --resume")
    stored = dict(read_meta(last).get("training", {}))
    fields = {f.name: f for f in dataclasses.fields(TrainOptions)}
    for key in ("out", "data", "images", "masks", "val", "class_map_file"):
        if stored.get(key) is not None:
            stored[key] = Path(stored[key])
    refused = [f"--{k.replace('_', '-')} {v} (the run has {stored.get(k)})" for k, v in changes.items()
               if k not in RESUMABLE_CHANGES and k in fields and v != stored.get(k)]
    if refused:
        raise UsageError(
            f"{run}: cannot change {', '.join(refused)} on resume; only {', '.join(RESUMABLE_CHANGES)} may change. "
            "Start a new run (-o) to train with other options"
        )
    merged = {k: v for k, v in stored.items() if k in fields}
    merged.update({k: v for k, v in changes.items() if k in RESUMABLE_CHANGES})
    return TrainOptions(**{**merged, "out": run, "resume": True})


def parse_class_weights(text: str, class_pixels: list[int]) -> list[float] | None:
    from .model import auto_class_weights

    if text in ("none", "", None):
        return None
    if text == "auto":
        return auto_class_weights(class_pixels)
    try:
        weights = [float(v) for v in text.split(",")]
    except ValueError:
        weights = []
    if len(weights) != len(class_pixels) or any(w < 0 for w in weights):
        raise UsageError(f"--class-weights {text!r}: use none, auto, or {len(class_pixels)} non-negative numbers "
                         "separated by commas (one per class)")
    return weights


