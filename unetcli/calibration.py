"""Calibrated probabilities: temperature scaling (Guo et al. 2017), its fit, and the measures that judge it.

A model's logits z become probabilities sigmoid(z / T) (binary models, one logit) or softmax(z / T) (one logit
per class). One temperature T > 0 is fitted on held-out pixels by minimising their negative log-likelihood, on a
seeded random subsample when there are many. Dividing by T > 0 moves no logit across 0 and changes no argmax,
so the masks at the default threshold 0.5 stay exactly as they were; only the probabilities change.

Measures, on probability arrays (so that evaluate can use them too): the expected calibration error (ECE: 15
equal-width bins of the top-class confidence, |accuracy - confidence| weighted by the bins' shares; for binary
models the confidence is max(p, 1 - p) of the foreground probability p) and the Brier score (binary: the mean
squared error of p against the 0/1 truth; multi-class: the mean over pixels of the summed squared error of the
class probabilities against the one-hot truth). Pixels of IGNORE_ID are left out everywhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .masks import IGNORE_ID

ECE_BINS = 15
MAX_FIT_PIXELS = 2 ** 19  # pixels the fit and its before/after measures use at most (a seeded random subsample)
EPOCH_FIT_PIXELS = 2 ** 17  # during training, after every validation: about 0.15 s on one CPU core
LOG_T_BOUNDS = (math.log(0.02), math.log(50.0))  # temperatures searched: 0.02 .. 50
FIT_SEED = 0


# ------------------------------------------------------------------------------------------ probabilities


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def scaled_probabilities(logits: np.ndarray, binary: bool, temperature: float = 1.0) -> np.ndarray:
    """Pixel logits, (N,) for a binary model or (N, K) otherwise -> probabilities of the same shape (the
    foreground's for binary models) at `temperature`."""
    z = np.asarray(logits, np.float64) / temperature
    if binary:
        return 0.5 * (1 + np.tanh(0.5 * z))  # sigmoid without overflow
    return np.exp(_log_softmax(z))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, binary: bool, temperature: float) -> float:
    """Mean NLL of the true labels (class ids) at `temperature`: sigmoid BCE for binary models, softmax CE otherwise."""
    z = np.asarray(logits, np.float64) / temperature
    if binary:
        return float(np.mean(np.logaddexp(0.0, z) - (labels == 1) * z))
    return float(-np.mean(_log_softmax(z)[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, binary: bool, *, max_pixels: int = MAX_FIT_PIXELS,
                    seed: int = FIT_SEED) -> float:
    """The temperature that minimises the NLL of `labels` (class ids; IGNORE_ID left out) given `logits`
    ((N,) binary, (N, K) otherwise): a bounded 1-D search over log T (Brent's method, scipy), on at most
    `max_pixels` pixels drawn at random (seeded). No usable pixel: 1.0."""
    from scipy.optimize import minimize_scalar

    logits, labels = _valid(logits, labels)
    if len(labels) > max_pixels:
        keep = np.random.default_rng(seed).choice(len(labels), max_pixels, replace=False)
        logits, labels = logits[keep], labels[keep]
    if len(labels) == 0:
        return 1.0
    logits = np.asarray(logits, np.float64)
    found = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, binary, math.exp(log_t)),
                            bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(math.exp(found.x))


def _valid(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel()
    keep = labels != IGNORE_ID
    return np.asarray(values)[keep], labels[keep].astype(np.int64)


# ------------------------------------------------------------------------------------------ measures


def _confidence_and_correct(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-class confidence and whether the top class is the truth; (N,) probs are a binary foreground's."""
    if probs.ndim == 1:
        return np.maximum(probs, 1 - probs), (probs > 0.5) == (labels == 1)
    return probs.max(axis=1), probs.argmax(axis=1) == labels


@dataclass(frozen=True)
class Reliability:
    """Per equal-width confidence bin: its pixels, the sum of their confidences and how many were right."""

    pixels: np.ndarray
    confidence_sum: np.ndarray
    correct: np.ndarray

    @property
    def ece(self) -> float:
        """Sum over bins of (share of pixels) x |accuracy - mean confidence|; NaN without pixels."""
        total = int(self.pixels.sum())
        return float(np.abs(self.correct - self.confidence_sum).sum() / total) if total else math.nan

    def to_dict(self) -> dict:
        """Per bin (low to high confidence): pixels, mean confidence and accuracy (None for an empty bin)."""
        def means(sums: np.ndarray) -> list:
            return [round(float(v / n), 6) if n else None for v, n in zip(sums, self.pixels)]

        return {"pixels": [int(n) for n in self.pixels], "confidence": means(self.confidence_sum),
                "accuracy": means(self.correct)}


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """Probabilities ((N,) foreground probabilities of a binary model, or (N, K)) against class ids, binned by
    the top-class confidence: bin b holds b/bins <= c < (b+1)/bins, the last one includes 1."""
    probs, labels = _valid(probs, labels)
    confidence, correct = _confidence_and_correct(np.asarray(probs, np.float64), labels)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    return Reliability(np.bincount(index, minlength=bins), np.bincount(index, weights=confidence, minlength=bins),
                       np.bincount(index, weights=correct.astype(np.float64), minlength=bins))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of probabilities against class ids over `bins` confidence bins (see `reliability`): sum over bins of
    (share of pixels) x |accuracy - mean confidence|. NaN without usable pixels."""
    return reliability(probs, labels, bins).ece


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Binary ((N,) foreground probabilities): mean (p - y)^2; multi-class ((N, K)): mean over pixels of
    sum_k (p_k - [y = k])^2. NaN without usable pixels."""
    probs, labels = _valid(probs, labels)
    if len(labels) == 0:
        return math.nan
    probs = np.asarray(probs, np.float64)
    if probs.ndim == 1:
        return float(np.mean((probs - (labels == 1)) ** 2))
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1
    return float(np.mean(((probs - onehot) ** 2).sum(axis=1)))


# ------------------------------------------------------------------------------------------ a fit


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature, with the measures before (at `temperature_before`) and after, on `pixels` pixels."""

    temperature: float
    temperature_before: float
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float
    pixels: int
    source: str = ""  # what it was fitted on ("validation set, epoch 12", a data folder)

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def calibrate(logits: np.ndarray, labels: np.ndarray, binary: bool, *, temperature_before: float = 1.0,
              source: str = "", max_pixels: int = MAX_FIT_PIXELS, seed: int = FIT_SEED) -> Calibration:
    """Fit a temperature to pixel logits and labels and measure ECE and Brier before and after, on the same
    (subsampled) pixels."""
    logits, labels = _valid(logits, labels)
    if len(labels) > max_pixels:
        keep = np.random.default_rng(seed).choice(len(labels), max_pixels, replace=False)
        logits, labels = logits[keep], labels[keep]
    temperature = fit_temperature(logits, labels, binary, max_pixels=max_pixels, seed=seed)
    before = scaled_probabilities(logits, binary, temperature_before)
    after = scaled_probabilities(logits, binary, temperature)
    return Calibration(temperature, temperature_before, expected_calibration_error(before, labels),
                       expected_calibration_error(after, labels), brier_score(before, labels), brier_score(after, labels),
                       len(labels), source)


class PixelSample:
    """Pixel logits and labels gathered image by image for a fit: a seeded random share of each image's labelled
    pixels, at most `max_pixels` / `images` per image, so that the whole stays within `max_pixels`. (evaluate
    gathers probabilities with it the same way.)"""

    def __init__(self, images: int, binary: bool, max_pixels: int = MAX_FIT_PIXELS, seed: int = FIT_SEED):
        self.binary, self.max_pixels = binary, max_pixels
        self.per_image = max(1, -(-max_pixels // max(images, 1)))
        self.rng = np.random.default_rng(seed)
        self.logits: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        """One image: logits (K, H, W) (K = 1 for binary models) and class ids (H, W). Kept as float32 (converted
        after sampling, so that e.g. 16-bit probability maps are not copied whole)."""
        flat = np.asarray(logits).reshape(logits.shape[0], -1)
        labels = np.asarray(labels).ravel()
        where = np.flatnonzero(labels != IGNORE_ID)
        if len(where) > self.per_image:
            where = np.sort(self.rng.choice(where, self.per_image, replace=False))
        picked = flat[0, where] if self.binary else flat[:, where].T
        self.logits.append(picked.astype(np.float32, copy=False))
        self.labels.append(labels[where].astype(np.int64))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.labels:
            return np.zeros((0,) if self.binary else (0, 1), np.float32), np.zeros(0, np.int64)
        return np.concatenate(self.logits), np.concatenate(self.labels)

    def calibrate(self, temperature_before: float = 1.0, source: str = "") -> Calibration | None:
        """The fit on what was gathered; None when no labelled pixel was seen."""
        logits, labels = self.arrays()
        if len(labels) == 0:
            return None
        return calibrate(logits, labels, self.binary, temperature_before=temperature_before, source=source,
                         max_pixels=self.max_pixels)


# ------------------------------------------------------------------------------------------ a model folder


def calibrate_model(model_dir: Path, data: Path | None, out: Path, *, images: Path | None = None,
                    masks: Path | None = None, device: str = "auto", precision: str = "auto",
                    tile: str = "auto") -> Calibration:
    """`unetcli calibrate`: fit a temperature for a model folder on DATA's pairs (predicted as `predict` would,
    whole or in tiles) and write a copy of the folder with it to `out`. The given folder is never changed."""
    from .checkpoint import copy_model_folder, read_meta
    from .data import find_pairs, read_sample, resolve_layout
    from .errors import DataError, UsageError
    from .predictor import Predictor

    model_dir, out = Path(model_dir), Path(out)
    if out.exists() or out.resolve().is_relative_to(model_dir.resolve()):
        what = "already exists" if out.exists() else f"lies inside {model_dir}"
        raise UsageError(f"-o {out}: {what}; calibrate writes a new model folder (the given one is never changed)")
    meta = read_meta(model_dir)
    predictor = Predictor.from_folder(model_dir, device, precision, tile=tile)
    predictor.temperature = 1.0  # the raw logits
    pairs = find_pairs(*resolve_layout(data, images, masks))
    class_map = predictor.class_map
    sample = PixelSample(len(pairs), class_map.is_binary)
    for pair in pairs:
        read = read_sample(pair)
        sample.add(predictor.image_logits(read.image, pair.image), class_map.decode(read.raw_mask, pair.mask))
    where = str(data if data is not None else images)
    fitted = sample.calibrate(meta.temperature, source=f"{where} ({len(pairs)} pairs)")
    if fitted is None:
        raise DataError(f"{where}: no labelled pixel to calibrate on (every mask pixel is ignored)")
    copy_model_folder(model_dir, out, meta.calibrated(fitted))
    return fitted
