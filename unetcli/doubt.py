"""A doubt score per predicted image: which predictions deserve a human look, from what predicting computes anyway.

Three parts, each in [0, 1] (see docs/decisions.md, "Doubt"):
  uncertain         the share of pixels near the decision boundary: the two most probable classes lie within
                    UNCERTAIN_MARGIN of each other (binary models: the foreground probability within 0.25 of the
                    threshold, measured in logits, so 0.25-0.75 at the default threshold 0.5);
  tta_disagreement  with --tta, the share of pixels on which the four flipped views decide differently (None without);
  intensity_shift   how far the image's per-channel mean and standard deviation lie from the training images', in
                    spreads of the training images' own (z), mapped by 1 - exp(-max(0, z - TYPICAL_Z) / Z_SCALE);
                    None when the model folder holds no training intensity statistics (folders trained before them).
The score is 1 - prod(1 - part) over the parts present: a noisy-or, high when any part is high, and raised by each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .channels import channel_sums, mean_and_std

UNCERTAIN_MARGIN = 0.5  # top-two probability margin below which a pixel counts as uncertain
TYPICAL_Z = 3.0  # intensity z-scores up to this are ordinary variation between images (three spreads): no shift
Z_SCALE = 3.0  # beyond TYPICAL_Z, the shift part reaches 1 - 1/e at z = TYPICAL_Z + Z_SCALE
MIN_MEAN_SPREAD = 0.02  # floor of the training images' spread of means (unit range: 5 of 255 grey levels)
MIN_LOG_STD_SPREAD = 0.1  # floor of their spread of log standard deviations (10 % contrast)


@dataclass(frozen=True)
class PixelDoubt:
    """What the predictor counted on one image's final logits (tiled images: summed over their rows)."""

    pixels: int
    uncertain: int  # pixels near the decision boundary
    disagreeing: float | None = None  # --tta: pixels whose flipped views disagree (fractional where tiles blend)

    def __add__(self, other: PixelDoubt) -> PixelDoubt:
        disagreeing = None if self.disagreeing is None else self.disagreeing + (other.disagreeing or 0.0)
        return PixelDoubt(self.pixels + other.pixels, self.uncertain + other.uncertain, disagreeing)


@dataclass(frozen=True)
class Doubt:
    score: float
    uncertain: float
    tta_disagreement: float | None
    intensity_shift: float | None

    def to_dict(self) -> dict:
        return {"score": self.score, "uncertain": self.uncertain, "tta_disagreement": self.tta_disagreement,
                "intensity_shift": self.intensity_shift}


def uncertain_pixels(logits: np.ndarray, *, binary: bool, threshold: float) -> int:
    """(K, H, W) logits (divided by the temperature) -> the number of pixels near the decision boundary."""
    band = 2 * math.atanh(UNCERTAIN_MARGIN)  # |2 sigmoid(z) - 1| < margin  <=>  |z| < 2 atanh(margin)
    if binary:
        centre = math.log(threshold / (1 - threshold))
        return int(np.count_nonzero(np.abs(logits[0] - centre) < band))
    if len(logits) == 2:  # two-class softmax: p1 - p0 = tanh((z1 - z0) / 2); 200x faster than the general case
        return int(np.count_nonzero(np.abs(logits[1] - logits[0]) < band))
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    probs = shifted / shifted.sum(axis=0, keepdims=True)
    top_two = np.partition(probs, len(probs) - 2, axis=0)[-2:]
    return int(np.count_nonzero(top_two[1] - top_two[0] < UNCERTAIN_MARGIN))


def image_statistics(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """H x W x C stored image -> its per-channel mean and standard deviation in [0, 1] units (channels.channel_sums)."""
    return mean_and_std(channel_sums(image), image.shape[0] * image.shape[1])


def training_intensity(statistics) -> dict:
    """Each training image's per-channel (mean, std) in [0, 1] units (scan.DatasetScan.image_statistics, or
    image_statistics) -> the intensity statistics for unetcli.json: per channel, the mean and spread (standard
    deviation between images) of the images' means, and of the logs of their standard deviations."""
    statistics = list(statistics)
    means = np.array([mean for mean, _ in statistics], np.float64)
    log_stds = np.log(np.maximum(np.array([std for _, std in statistics], np.float64), 1e-6))

    def rounded(values: np.ndarray) -> list[float]:
        return [round(float(v), 6) for v in values]

    return {"images": len(means), "mean": rounded(means.mean(axis=0)), "mean_spread": rounded(means.std(axis=0)),
            "log_std": rounded(log_stds.mean(axis=0)), "log_std_spread": rounded(log_stds.std(axis=0))}


def intensity_z(image: np.ndarray, intensity: dict) -> float:
    """How far the image's statistics lie from the training images': the largest z-score over channels of its
    mean and of its log standard deviation, against the spreads between training images (with floors)."""
    mean, std = image_statistics(image)
    mean_spread = np.maximum(np.asarray(intensity["mean_spread"]), MIN_MEAN_SPREAD)
    std_spread = np.maximum(np.asarray(intensity["log_std_spread"]), MIN_LOG_STD_SPREAD)
    z_mean = np.abs(mean - np.asarray(intensity["mean"])) / mean_spread
    z_std = np.abs(np.log(np.maximum(std, 1e-6)) - np.asarray(intensity["log_std"])) / std_spread
    return float(np.max(np.concatenate([z_mean, z_std])))


def shift_part(z: float) -> float:
    """An intensity z-score -> the intensity_shift part in [0, 1] (not finite: 1)."""
    if not math.isfinite(z):
        return 1.0
    return 1.0 - math.exp(-max(0.0, z - TYPICAL_Z) / Z_SCALE)


def combine(parts) -> float:
    """The doubt score of the parts present (None: absent): 1 - prod(1 - part)."""
    return 1.0 - math.prod(1.0 - p for p in parts if p is not None)


def image_doubt(counted: PixelDoubt, image: np.ndarray, intensity: dict | None) -> Doubt:
    """One predicted image's doubt: `counted` by the predictor, `image` as the network saw it (channels matched),
    `intensity` the model folder's training statistics (None: no intensity part)."""
    pixels = max(1, counted.pixels)
    uncertain = counted.uncertain / pixels
    disagreement = None if counted.disagreeing is None else min(1.0, counted.disagreeing / pixels)
    shift = None
    if intensity is not None and len(intensity.get("mean", ())) == image.shape[2]:
        shift = shift_part(intensity_z(image, intensity))
    parts = (uncertain, disagreement, shift)
    return Doubt(round(combine(parts), 6), *(None if p is None else round(p, 6) for p in parts))
