"""The one Albumentations pipeline: train = crop + augment + normalise; eval = normalise + pad.

Both pipelines are built from one `PipelineConfig` and serialised with `A.to_dict` into the model folder;
predict and evaluate rebuild the eval pipeline from there (`A.from_dict`), so preprocessing cannot drift.
Images enter every pipeline as float32 in [0, 1] (see `images.to_unit_range`), so `max_pixel_value` is 1.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import UsageError
from .masks import IGNORE_ID
from .options import AUGMENT_PRESETS


def _import_albumentations():
    """albumentations asks PyPI for a newer version when imported, unless NO_ALBUMENTATIONS_UPDATE is set:
    set it for the import only, so the caller's environment stays as it was."""
    previous = os.environ.get("NO_ALBUMENTATIONS_UPDATE")
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    try:
        import albumentations
    finally:
        if previous is None:
            del os.environ["NO_ALBUMENTATIONS_UPDATE"]
        else:
            os.environ["NO_ALBUMENTATIONS_UPDATE"] = previous
    return albumentations


A = _import_albumentations()

STRIDE = 32  # U-Net with a 5-stage encoder halves the resolution five times
REFLECT = cv2.BORDER_REFLECT_101


@dataclass(frozen=True)
class PipelineConfig:
    mean: tuple[float, ...]  # per-channel mean of the training images, in [0, 1] units
    std: tuple[float, ...]  # per-channel standard deviation, in [0, 1] units
    crop: int = 256  # training crop side in pixels
    augment: str = "default"  # a preset name or a path to an Albumentations JSON/YAML file
    foreground_crops: float = 0.3  # share of crops that contain foreground (sparse classes get seen)


def _augmentations(augment: str) -> list:
    flips = [A.HorizontalFlip(), A.VerticalFlip(), A.RandomRotate90()]
    if augment == "none":
        return []
    if augment == "light":
        return flips
    if augment == "default":
        return flips + [
            A.Affine(scale=(0.9, 1.1), rotate=(-15, 15), translate_percent=(-0.05, 0.05), border_mode=REFLECT, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        ]
    if augment == "heavy":
        return flips + [
            A.Affine(scale=(0.75, 1.25), rotate=(-45, 45), translate_percent=(-0.1, 0.1), shear=(-8, 8),
                     border_mode=REFLECT, p=0.7),
            A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.7),
            A.RandomGamma(gamma_limit=(70, 150), p=0.3),
            A.GaussianBlur(blur_limit=(3, 5), p=0.2),
            A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
        ]
    if augment == "elastic":
        # The U-Net paper: smooth deformations from random displacements on a coarse 3x3 grid
        # (about 10 px), plus shift, small rotation, flips and grey-value variation.
        return flips + [
            A.GridElasticDeform(num_grid_xy=(3, 3), magnitude=10, p=0.8),
            A.Affine(scale=(0.9, 1.1), rotate=(-10, 10), translate_percent=(-0.05, 0.05), border_mode=REFLECT, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
            A.GaussNoise(std_range=(0.01, 0.03), p=0.3),
        ]
    path = Path(augment)
    if not path.is_file():
        raise UsageError(f"--augment {augment!r}: not a preset ({', '.join(AUGMENT_PRESETS)}) nor an existing file")
    try:
        fmt = "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = A.load(str(path), data_format=fmt)
    except Exception as err:  # noqa: BLE001 - albumentations raises many kinds for a bad file
        raise UsageError(f"{path}: not an Albumentations pipeline file ({err}); write one with A.save()") from None
    return [loaded]


def _crop(config: PipelineConfig):
    random_crop = A.RandomCrop(height=config.crop, width=config.crop, p=1 - config.foreground_crops)
    if config.foreground_crops <= 0:
        return random_crop
    # class id 0 is background and IGNORE_ID (255) unlabelled: a foreground crop contains some other class
    foreground_crop = A.CropNonEmptyMaskIfExists(height=config.crop, width=config.crop, ignore_values=[0, IGNORE_ID],
                                                 p=config.foreground_crops)
    return A.OneOf([random_crop, foreground_crop], p=1)


def build_train(config: PipelineConfig) -> A.Compose:
    """Pad small images, crop (a share of crops around foreground), augment, normalise. Masks and the
    optional per-pixel loss weight map ('weight') follow every spatial step with nearest interpolation."""
    return A.Compose(
        [
            A.PadIfNeeded(min_height=config.crop, min_width=config.crop, border_mode=REFLECT),
            _crop(config),
            *_augmentations(config.augment),
            A.Normalize(mean=config.mean, std=config.std, max_pixel_value=1.0),
        ],
        additional_targets={"weight": "mask"},
    )


def build_eval(config: PipelineConfig) -> A.Compose:
    """Normalise, then reflect-pad bottom/right to a multiple of the network stride (crop back with [:h, :w])."""
    return A.Compose(
        [
            A.Normalize(mean=config.mean, std=config.std, max_pixel_value=1.0),
            A.PadIfNeeded(min_height=None, min_width=None, pad_height_divisor=STRIDE, pad_width_divisor=STRIDE,
                          position="top_left", border_mode=REFLECT),
        ]
    )


def to_network_input(pipeline: A.Compose, image: np.ndarray, **targets) -> tuple[np.ndarray, dict]:
    """Apply a pipeline to an H x W x C float image in [0, 1] (and its targets: mask, weight); returns the image
    as a contiguous C x H' x W' float32 array, and the pipeline's other outputs."""
    out = pipeline(image=image, **targets)
    result = out.pop("image")
    if result.ndim == 2:
        result = result[:, :, None]
    return np.ascontiguousarray(result.transpose(2, 0, 1), dtype=np.float32), out


def to_dict(pipeline: A.Compose) -> dict:
    return A.to_dict(pipeline)


def from_dict(data: dict) -> A.Compose:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return A.from_dict(data)
