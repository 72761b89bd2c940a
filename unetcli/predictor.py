"""The inference engine: one Predictor shared by predict, evaluate and training's validation.

Whole images are reflect-padded to the network stride by the stored eval pipeline and cropped back; images
larger than the tile are predicted in overlapping tiles whose logits are blended (see tiling.py). The logits are
divided by the model's temperature (calibration.py; 1.0 for an uncalibrated model) before anything uses them:
probabilities, the binary threshold, objects, evaluate's scores.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .channels import match_channels
from .doubt import PixelDoubt, uncertain_pixels
from .errors import CompileFailedWarning, ModelFolderError, UsageError, first_line
from .images import to_unit_range
from .masks import ClassMap
from .modelmeta import DEFAULT_OVERLAP, DEFAULT_THRESHOLD
from .tiling import MAX_OVERLAP, MirroredImage, blend, is_overlap, is_tile_size, plan_tiles
from .transforms import STRIDE

PROB_SCALE = 65535  # --save probs: 16-bit PNGs, pixel value / 65535 = probability
PIXELS_PER_FORWARD = 2 ** 21  # at most 2 MP per forward pass (2 tiles of 1024^2), which bounds activation memory
CPU_PIXELS_PER_FORWARD = 2 ** 18  # batch size auto on CPU: a quarter megapixel per pass is fastest (measured: 512^2
# images at batch 1 run 20 % faster per pixel than at batch 4; 128^2 ones twice as fast at batch 8 as at batch 1)
AUTO_BATCH = 8  # batch size auto elsewhere: up to this many images (within PIXELS_PER_FORWARD)
TTA_FLIPS = ((), (3,), (2,), (2, 3))  # --tta: the image as it is, flipped horizontally, vertically and both


def parse_tile(tile: str | int, default: int) -> int | None:
    """'auto' -> the model's tile size, 'off' -> whole images always, N -> N (a multiple of the stride, 32)."""
    if tile == "auto":
        return default
    if tile in ("off", "0", 0):
        return None
    try:
        size = int(tile)
    except ValueError:
        raise UsageError(f"--tile {tile!r}: use auto, off or a size in pixels (a multiple of {STRIDE})") from None
    if not is_tile_size(size):
        raise UsageError(f"--tile {size}: the tile size must be a multiple of {STRIDE} (e.g. 256, 512, 1024)")
    return size


def check_overlap(overlap: float) -> float:
    if not is_overlap(overlap):
        raise UsageError(f"--overlap {overlap}: use a share between 0 and {MAX_OVERLAP} (default {DEFAULT_OVERLAP})")
    return overlap


def check_threshold(threshold: float) -> float:
    if not 0 < threshold < 1:
        raise UsageError(f"--threshold {threshold}: use a probability strictly between 0 and 1")
    return threshold


class Predictor:
    """A model plus everything needed to apply it exactly as it was trained."""

    def __init__(self, model, class_map: ClassMap, eval_pipeline, *, in_channels: int, device, precision,
                 threshold: float = DEFAULT_THRESHOLD, tile: int | None = None, overlap: float = DEFAULT_OVERLAP, tta: bool = False,
                 batch_size: int = 0, compile_model: bool = False, temperature: float = 1.0, intensity: dict | None = None):
        import torch

        self.torch = torch
        self.class_map = class_map
        self.pipeline = eval_pipeline
        self.in_channels = in_channels
        self.device = device
        self.precision = precision
        self.threshold = threshold
        self.tile = tile  # images larger than this (either side) are predicted in overlapping tiles
        self.overlap = overlap
        self.tta = tta  # average over horizontal, vertical and both flips
        self.batch_size = batch_size  # images per forward pass at most; 0: auto (see images_per_forward)
        self.temperature = temperature  # logits / temperature: calibrated probabilities (calibration.py)
        self.intensity = intensity  # the training images' intensity statistics (doubt.py); None: not stored
        memory_format = torch.channels_last if precision.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=memory_format)
        self.compiled = None  # torch.compile'd model (--compile); compiled at the first call, eager if that fails
        if compile_model:
            try:
                self.compiled = torch.compile(self.model)
            except Exception as err:  # noqa: BLE001 - unsupported Python/platform: predict eagerly
                self._compile_failed(err)

    @classmethod
    def from_folder(cls, path: Path, device: str = "auto", precision: str = "auto", *, tile: str = "auto",
                    overlap: float | None = None, tta: bool = False, threshold: float | None = None,
                    batch_size: int = 0, compile_model: bool = False) -> Predictor:
        """Load a model folder. tile: 'auto' (the model's default), 'off', or a size in pixels."""
        import torch

        from .checkpoint import load_model_folder
        from .model import cast_weights, fold_batchnorms
        from .runtime import pick_device, pick_precision
        from .transforms import from_dict

        loaded = load_model_folder(path)
        try:
            eval_pipeline = from_dict(loaded.meta.pipeline["eval"])
        except Exception as err:  # noqa: BLE001 - Albumentations raises many types for a damaged description
            raise ModelFolderError(f"{loaded.path / 'unetcli.json'}: the eval pipeline cannot be rebuilt "
                                   f"({type(err).__name__}: {err}); the model folder is damaged") from None
        dev = pick_device(device)
        chosen = pick_precision(precision, dev)
        example = torch.randn(1, loaded.in_channels, 64, 64, generator=torch.Generator().manual_seed(0))
        model = cast_weights(fold_batchnorms(loaded.model, example), chosen.dtype)
        defaults = loaded.meta.tile
        return cls(model, loaded.class_map, eval_pipeline, in_channels=loaded.in_channels, device=dev, precision=chosen,
                   threshold=loaded.threshold if threshold is None else check_threshold(threshold),
                   tile=parse_tile(tile, defaults.size),
                   overlap=defaults.overlap if overlap is None else check_overlap(overlap), tta=tta,
                   batch_size=batch_size, compile_model=compile_model, temperature=loaded.temperature,
                   intensity=loaded.meta.intensity)

    def preprocess(self, image: np.ndarray, path: Path | str = "image") -> np.ndarray:
        """H x W x C stored image -> C x H' x W' float32, normalised and padded to the stride."""
        from .transforms import to_network_input

        image = match_channels(image, self.in_channels, path)
        return to_network_input(self.pipeline, to_unit_range(image))[0]

    def logits(self, batch: np.ndarray, height: int, width: int):
        """Padded batch (N, C, H', W') -> float32 logits cropped back to (N, K, height, width), on CPU, divided by
        the temperature."""
        return self.logits_and_disagreement(batch, height, width)[0]

    def logits_and_disagreement(self, batch: np.ndarray, height: int, width: int):
        """As `logits`, and with --tta the pixels on which the flipped views decide differently: (N, height, width)
        float32, 1 where they disagree (None without TTA). Only the batch's views are held, never more."""
        torch = self.torch
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self.precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.model.eval()
        disagreement = None
        with torch.inference_mode(), self.precision.autocast(self.device):
            if self.tta:
                views = [self._flipped(self._forward(self._flipped(x, dims)).float(), dims)[:, :, :height, :width]
                         for dims in TTA_FLIPS]
                out = sum(views) / len(views)
                disagreement = self._views_disagree(views).cpu().numpy()
            else:
                out = self._forward(x)[:, :, :height, :width]
        out = out.float().cpu()
        return (out / self.temperature if self.temperature != 1.0 else out), disagreement

    def _views_disagree(self, views: list):
        """Raw (uncalibrated) logits of the TTA views -> (N, H, W) float32, 1 where their class decisions differ."""
        if self.class_map.is_binary:  # logit / T > logit(threshold)  <=>  logit > T * logit(threshold)
            centre = self.temperature * float(np.log(self.threshold / (1 - self.threshold)))
            decisions = [view[:, 0] > centre for view in views]
        else:
            decisions = [view.argmax(dim=1) for view in views]
        differs = sum((d != decisions[0]).to(self.torch.uint8) for d in decisions[1:])
        return (differs > 0).float()

    def pixel_doubt(self, logits: np.ndarray, disagreement: np.ndarray | None) -> PixelDoubt:
        """(K, H, W) final logits (and the TTA disagreement map, H x W) -> what doubt.py needs of them."""
        return PixelDoubt(logits.shape[1] * logits.shape[2],
                          uncertain_pixels(logits, binary=self.class_map.is_binary, threshold=self.threshold),
                          None if disagreement is None else float(disagreement.sum(dtype=np.float64)))

    def _forward(self, x):
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as err:  # noqa: BLE001 - no C++ compiler, unsupported op, ...: predict eagerly
                self._compile_failed(err)
        return self.model(x)

    def _compile_failed(self, err: Exception) -> None:
        self.compiled = None
        warnings.warn(CompileFailedWarning(first_line(err, 200), "predicting"), stacklevel=2)

    @staticmethod
    def _flipped(x, dims):
        return x.flip(dims) if dims else x

    def ids_from_logits(self, logits) -> np.ndarray:
        from .model import class_ids

        return class_ids(logits, self.class_map.is_binary, self.threshold).numpy()

    @property
    def probability_channels(self) -> int:
        """--save probs: one map (the foreground's) for binary models, one per class otherwise."""
        return 1 if self.class_map.is_binary else self.class_map.num_classes

    def probabilities(self, logits, axis: int) -> np.ndarray:
        """Logits with classes along `axis` -> uint16 probabilities x PROB_SCALE (sigmoid for binary models,
        softmax otherwise), consistent with the class ids up to the 16-bit rounding."""
        torch = self.torch
        logits = torch.as_tensor(logits, dtype=torch.float32)
        probs = torch.sigmoid(logits) if self.class_map.is_binary else torch.softmax(logits, dim=axis)
        return (probs * PROB_SCALE).round_().to(torch.int32).numpy().astype(np.uint16)

    def predict_batch(self, images: list[np.ndarray]) -> np.ndarray:
        """Same-size stored images, predicted whole -> class ids (N, H, W) uint8."""
        return self.predict_batch_maps(images, probs=False)[0]

    def predict_batch_maps(self, images: list[np.ndarray], probs: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Same-size stored images, predicted whole -> class ids (N, H, W) uint8 and, with `probs`, their
        probabilities (N, probability_channels, H, W) uint16 (else None)."""
        return self.predict_batch_doubt(images, probs)[:2]

    def predict_batch_doubt(self, images: list[np.ndarray], probs: bool) -> tuple[np.ndarray, np.ndarray | None, list[PixelDoubt]]:
        """As `predict_batch_maps`, plus each image's PixelDoubt (doubt.py) from the same logits."""
        height, width = images[0].shape[:2]
        batch = np.stack([self.preprocess(image) for image in images])
        logits, disagreement = self.logits_and_disagreement(batch, height, width)
        counted = [self.pixel_doubt(logits[i].numpy(), None if disagreement is None else disagreement[i])
                   for i in range(len(images))]
        return self.ids_from_logits(logits), self.probabilities(logits, axis=1) if probs else None, counted

    def images_per_forward(self, height: int, width: int) -> int:
        """How many images (or tiles) of this size go through the network together: --batch-size within the
        memory bound, or with batch size auto a quarter megapixel on CPU (cache-friendly) and up to 8 images
        elsewhere; always at least one."""
        pixels = height * width
        if self.batch_size:
            return max(1, min(self.batch_size, PIXELS_PER_FORWARD // pixels))
        budget = CPU_PIXELS_PER_FORWARD if self.device.type == "cpu" else PIXELS_PER_FORWARD
        return max(1, min(AUTO_BATCH, budget // pixels))

    def needs_tiles(self, image: np.ndarray) -> bool:
        return bool(self.tile) and (image.shape[0] > self.tile or image.shape[1] > self.tile)

    def predict_image(self, image: np.ndarray, path: Path | str = "image") -> np.ndarray:
        """One stored image -> class ids (H, W) uint8: whole when it fits a tile, else overlap-tile."""
        return self.predict_image_maps(image, path, probs=False)[0]

    def predict_image_maps(self, image: np.ndarray, path: Path | str, probs: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """One stored image -> class ids (H, W) uint8 and, with `probs`, its probabilities (probability_channels,
        H, W) uint16 (else None): whole when it fits a tile, else overlap-tile."""
        return self.predict_image_doubt(image, path, probs)[:2]

    def predict_image_doubt(self, image: np.ndarray, path: Path | str, probs: bool) -> tuple[np.ndarray, np.ndarray | None, PixelDoubt]:
        """As `predict_image_maps`, plus the image's PixelDoubt (doubt.py), counted row band by row band when tiled."""
        image = match_channels(image, self.in_channels, path)
        if not self.needs_tiles(image):
            ids, maps, counted = self.predict_batch_doubt([image], probs)
            return ids[0], None if maps is None else maps[0], counted[0]
        return self._predict_tiled(image, path, probs)

    def _predict_tiled(self, image: np.ndarray, path: Path | str, probs: bool) -> tuple:
        """(ids, probabilities or None, PixelDoubt) of an image predicted in overlapping tiles; with --tta the views'
        disagreement is blended along with the logits, as one more channel."""
        ids = np.zeros(image.shape[:2], np.uint8)
        maps = np.zeros((self.probability_channels, *image.shape[:2]), np.uint16) if probs else None
        with_disagreement = self.tta
        counted = [PixelDoubt(0, 0, 0.0 if with_disagreement else None)]

        def take_rows(top: int, logits: np.ndarray) -> None:
            disagreement = None
            if with_disagreement:
                logits, disagreement = logits[:-1], logits[-1]
            ids[top: top + logits.shape[1]] = self._ids_from_blended(logits)
            if maps is not None:
                maps[:, top: top + logits.shape[1]] = self.probabilities(logits, axis=0)
            counted[0] += self.pixel_doubt(logits, disagreement)

        self._tiled(image, path, take_rows, with_disagreement=with_disagreement)
        return ids, maps, counted[0]

    def image_logits(self, image: np.ndarray, path: Path | str = "image") -> np.ndarray:
        """One stored image -> its logits (K, H, W) float32 (divided by the temperature), whole or overlap-tiled
        as `predict_image_maps` computes them (unetcli calibrate)."""
        image = match_channels(image, self.in_channels, path)
        if not self.needs_tiles(image):
            return self.logits(self.preprocess(image, path)[None], *image.shape[:2])[0].numpy()
        out = np.zeros((self.probability_channels, *image.shape[:2]), np.float32)

        def take_rows(top: int, logits: np.ndarray) -> None:
            out[:, top: top + logits.shape[1]] = logits

        self._tiled(image, path, take_rows)
        return out

    def _tiled(self, image: np.ndarray, path: Path | str, take_rows, *, with_disagreement: bool = False) -> None:
        """Predict `image` in overlapping tiles; `take_rows(top, logits)` receives the blended (K, rows, W) logits
        (with_disagreement: K + 1 channels, the last the blended TTA disagreement)."""
        grid = plan_tiles(image.shape[0], image.shape[1], self.tile, self.overlap)

        def forward(tiles: list[np.ndarray]) -> np.ndarray:
            batch = np.stack([self.preprocess(tile, path) for tile in tiles])
            logits, disagreement = self.logits_and_disagreement(batch, grid.tile_height, grid.tile_width)
            if with_disagreement:
                return np.concatenate([logits.numpy(), disagreement[:, None]], axis=1)
            return logits.numpy()

        per_forward = self.images_per_forward(grid.tile_height, grid.tile_width)
        channels = self.probability_channels + (1 if with_disagreement else 0)
        blend(MirroredImage(image, grid), grid, forward, channels, take_rows, per_forward)

    def _ids_from_blended(self, logits: np.ndarray) -> np.ndarray:
        """(K, rows, W) blended logits -> (rows, W) ids; same rule as `ids_from_logits`."""
        if self.class_map.is_binary:
            return (logits[0] > np.log(self.threshold / (1 - self.threshold))).astype(np.uint8)
        return logits.argmax(axis=0).astype(np.uint8)

