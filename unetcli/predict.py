"""Inference: one Predictor shared by predict, evaluate and training's validation.

Whole images are reflect-padded to the network stride by the stored eval pipeline and cropped back.
`predict_files` streams results, one per input: decoding runs ahead in a thread pool and writing runs
behind, so disk work overlaps with the network.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import sys
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from .errors import CompileFailedWarning, DataError, ModelFolderError, OutputError, UnetcliError, UsageError, first_line
from .images import is_image_file, read_image, remove_stale_temp_files, to_unit_range, write_png
from .masks import ClassMap
from .tiling import MirroredImage, blend, plan_tiles

SAVE_KINDS = ("mask", "color", "overlay", "probs")
PROB_SCALE = 65535  # --save probs: 16-bit PNGs, pixel value / 65535 = probability
PIXELS_PER_FORWARD = 2 ** 21  # at most 2 MP per forward pass (2 tiles of 1024^2), which bounds activation memory
CPU_PIXELS_PER_FORWARD = 2 ** 18  # batch size auto on CPU: a quarter megapixel per pass is fastest (measured: 512^2
# images at batch 1 run 20 % faster per pixel than at batch 4; 128^2 ones twice as fast at batch 8 as at batch 1)
AUTO_BATCH = 8  # batch size auto elsewhere: up to this many images (within PIXELS_PER_FORWARD)
PREFETCH_BYTES = 256 * 2 ** 20  # decoded images held ahead of the network: at most this much (but at least one image)


def match_channels(image: np.ndarray, channels: int, path: Path | str) -> np.ndarray:
    """Adapt well-defined channel differences (gray<->RGB, dropping alpha); refuse the rest."""
    have = image.shape[2]
    if have == channels:
        return image
    if channels == 1 and have in (3, 4):
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)[:, :, None]
    if channels == 3 and have == 1:
        return np.repeat(image, 3, axis=2)
    if channels == 3 and have == 4:
        return np.ascontiguousarray(image[:, :, :3])
    raise DataError(f"{path}: image has {have} channel(s) but the model expects {channels}; convert the image")


def parse_tile(tile: str | int, default: int) -> int | None:
    """'auto' -> the model's tile size, 'off' -> whole images always, N -> N (a multiple of 32)."""
    if tile == "auto":
        return default
    if tile in ("off", "0", 0):
        return None
    try:
        size = int(tile)
    except ValueError:
        raise UsageError(f"--tile {tile!r}: use auto, off or a size in pixels (a multiple of 32)") from None
    if size < 32 or size % 32:
        raise UsageError(f"--tile {size}: the tile size must be a multiple of 32 (e.g. 256, 512, 1024)")
    return size


def check_overlap(overlap: float) -> float:
    if not 0 <= overlap <= 0.75:
        raise UsageError(f"--overlap {overlap}: use a share between 0 and 0.75 (default 0.25)")
    return overlap


def check_threshold(threshold: float) -> float:
    if not 0 < threshold < 1:
        raise UsageError(f"--threshold {threshold}: use a probability strictly between 0 and 1")
    return threshold


class Predictor:
    """A model plus everything needed to apply it exactly as it was trained."""

    def __init__(self, model, class_map: ClassMap, eval_pipeline, in_channels: int, device, precision,
                 threshold: float = 0.5, tile: int | None = None, overlap: float = 0.25, tta: bool = False,
                 batch_size: int = 0, compile_model: bool = False):
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
        memory_format = torch.channels_last if precision.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=memory_format)
        self.compiled = None  # torch.compile'd model (--compile); compiled at the first call, eager if that fails
        if compile_model:
            try:
                self.compiled = torch.compile(self.model)
            except Exception as err:  # noqa: BLE001 - unsupported Python/platform: predict eagerly
                self._compile_failed(err)

    @classmethod
    def from_folder(cls, path: Path, device: str = "auto", precision: str = "auto", tile: str = "auto",
                    overlap: float | None = None, tta: bool = False, threshold: float | None = None,
                    batch_size: int = 0, compile_model: bool = False) -> "Predictor":
        """Load a model folder. tile: 'auto' (the model's default), 'off', or a size in pixels."""
        import torch

        from .checkpoint import load_model_folder
        from .model import cast_weights, fold_batchnorms
        from .runtime import pick_device, pick_precision
        from .transforms import from_dict

        loaded = load_model_folder(path)
        try:
            eval_pipeline = from_dict(loaded.meta["pipeline"]["eval"])
        except Exception as err:  # noqa: BLE001 - Albumentations raises many types for a damaged description
            raise ModelFolderError(f"{loaded.path / 'unetcli.json'}: the eval pipeline cannot be rebuilt "
                                   f"({type(err).__name__}: {err}); the model folder is damaged") from None
        dev = pick_device(device)
        defaults = loaded.meta.get("tile", {})
        if not isinstance(defaults, dict):
            defaults = {}
        chosen = pick_precision(precision, dev)
        example = torch.randn(1, loaded.in_channels, 64, 64, generator=torch.Generator().manual_seed(0))
        model = cast_weights(fold_batchnorms(loaded.model, example), chosen.dtype)
        return cls(model, loaded.class_map, eval_pipeline, loaded.in_channels, dev, chosen,
                   loaded.threshold if threshold is None else check_threshold(threshold),
                   parse_tile(tile, defaults.get("size", 512)),
                   defaults.get("overlap", 0.25) if overlap is None else check_overlap(overlap), tta, batch_size,
                   compile_model)

    def preprocess(self, image: np.ndarray, path: Path | str = "image") -> np.ndarray:
        """H x W x C stored image -> C x H' x W' float32, normalised and padded to the stride."""
        image = match_channels(image, self.in_channels, path)
        out = self.pipeline(image=to_unit_range(image))["image"]
        if out.ndim == 2:
            out = out[:, :, None]
        return np.ascontiguousarray(out.transpose(2, 0, 1))

    def logits(self, batch: np.ndarray, height: int, width: int):
        """Padded batch (N, C, H', W') -> float32 logits cropped back to (N, K, height, width), on CPU."""
        torch = self.torch
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self.precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.model.eval()
        with torch.inference_mode(), self.precision.autocast(self.device):
            if self.tta:
                flips = ((), (3,), (2,), (2, 3))
                out = sum(self._flipped(self._forward(self._flipped(x, dims)).float(), dims) for dims in flips) / len(flips)
            else:
                out = self._forward(x)
        return out[:, :, :height, :width].float().cpu()

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
        height, width = images[0].shape[:2]
        batch = np.stack([self.preprocess(image) for image in images])
        logits = self.logits(batch, height, width)
        return self.ids_from_logits(logits), self.probabilities(logits, axis=1) if probs else None

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
        image = match_channels(image, self.in_channels, path)
        if not self.needs_tiles(image):
            ids, maps = self.predict_batch_maps([image], probs)
            return ids[0], None if maps is None else maps[0]
        grid = plan_tiles(image.shape[0], image.shape[1], self.tile, self.overlap)

        def forward(tiles: list[np.ndarray]) -> np.ndarray:
            batch = np.stack([self.preprocess(tile, path) for tile in tiles])
            return self.logits(batch, grid.tile_height, grid.tile_width).numpy()

        ids = np.zeros(image.shape[:2], np.uint8)
        maps = np.zeros((self.probability_channels, *image.shape[:2]), np.uint16) if probs else None

        def take_rows(top: int, logits: np.ndarray) -> None:
            ids[top: top + logits.shape[1]] = self._ids_from_blended(logits)
            if maps is not None:
                maps[:, top: top + logits.shape[1]] = self.probabilities(logits, axis=0)

        per_forward = self.images_per_forward(grid.tile_height, grid.tile_width)
        blend(MirroredImage(image, grid), grid, forward, self.probability_channels, take_rows, per_forward)
        return ids, maps

    def _ids_from_blended(self, logits: np.ndarray) -> np.ndarray:
        """(K, rows, W) blended logits -> (rows, W) ids; same rule as `ids_from_logits`."""
        if self.class_map.is_binary:
            return (logits[0] > np.log(self.threshold / (1 - self.threshold))).astype(np.uint8)
        return logits.argmax(axis=0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- inputs


def resolve_inputs(inputs: Iterable[str], stdin=None) -> list[Path]:
    """Files, folders (their image files), globs, @list.txt files and '-' (paths on stdin), in order."""
    paths: list[Path] = []
    for item in inputs:
        if item == "-":
            stream = stdin or sys.stdin
            paths += [Path(line.strip()) for line in stream if line.strip()]
        elif item.startswith("@"):
            list_file = Path(item[1:])
            try:
                lines = list_file.read_text(encoding="utf-8").splitlines()
            except OSError as err:
                raise UsageError(f"{list_file}: cannot read the list file ({err.strerror})") from None
            paths += [Path(line.strip()) for line in lines if line.strip() and not line.startswith("#")]
        elif Path(item).is_dir():
            from .data import list_image_files

            paths += list_image_files(Path(item))
        elif any(ch in item for ch in "*?[") and not Path(item).exists():
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise UsageError(f"{item}: the pattern matches no files")
            paths += [Path(m) for m in matches if is_image_file(Path(m))]
        else:
            paths.append(Path(item))
    if not paths:
        raise UsageError("no input images given (files, folders, globs, @list.txt or - for stdin)")
    return paths


def parse_shard(shard: str | None) -> tuple[int, int]:
    if not shard:
        return 1, 1
    try:
        k, n = (int(part) for part in shard.split("/"))
    except ValueError:
        raise UsageError(f"--shard {shard!r}: use K/N, e.g. 1/4 for the first of four shards") from None
    if not 1 <= k <= n:
        raise UsageError(f"--shard {shard!r}: K must be between 1 and N")
    return k, n


def select_shard(paths: list[Path], shard: tuple[int, int]) -> list[Path]:
    k, n = shard
    return paths[k - 1 :: n]


# --------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class PredictOptions:
    out_dir: Path
    save: tuple[str, ...] = ("mask",)
    skip_existing: bool = False
    shard: tuple[int, int] = (1, 1)
    overlay_alpha: float = 0.5


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


def _check_collisions(targets: dict[Path, dict[str, Path]]) -> None:
    """`targets`: each input's output files (see output_paths)."""
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


def overlay(image: np.ndarray, colour: np.ndarray, ids: np.ndarray, alpha: float) -> np.ndarray:
    rgb = to_unit_range(image)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    rgb = rgb[:, :, :3]
    if image.dtype == np.float32:
        low, high = float(rgb.min()), float(rgb.max())
        rgb = (rgb - low) / (high - low or 1.0)
    base = (rgb * 255.0).clip(0, 255)
    blended = np.where((ids > 0)[:, :, None], base * (1 - alpha) + colour * alpha, base)
    return blended.astype(np.uint8)


def _write_outputs(predictor: Predictor, path: Path, image: np.ndarray, ids: np.ndarray, probs: np.ndarray | None,
                   options: PredictOptions) -> PredictResult:
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
                write_png(target, overlay(image, class_map.colourise(ids), ids, options.overlay_alpha))
    except UnetcliError as err:
        return PredictResult(path, "error", error=str(err), exit_code=err.exit_code)
    present = np.flatnonzero(np.bincount(ids.ravel(), minlength=class_map.num_classes))
    fraction = float((ids > 0).mean())
    warning = None
    if fraction == 0.0:
        warning = f"{path}: the prediction is entirely {class_map.classes[0].name}; check that the image resembles the training data"
    return PredictResult(path, "ok", {k: str(v) for k, v in targets.items()},
                         [class_map.classes[i].name for i in present], round(fraction, 6), warning)


def _read(path: Path):
    try:
        return read_image(path), None
    except UnetcliError as err:
        return None, err


def prefetch(executor, function, items: list, depth: int, size_of=None, budget: int = PREFETCH_BYTES) -> Iterator:
    """Like executor.map, but at most `depth` results are held ahead of the consumer (bounded memory), and with
    `size_of(result)` (bytes) only as many as fit `budget` at the size of the latest result, at least one: huge
    images are decoded one ahead, small ones `depth` ahead."""
    queue: deque = deque()
    iterator = iter(items)
    ahead = depth if size_of is None else min(depth, 2)  # sizes are unknown until the first result
    for item in itertools.islice(iterator, ahead):
        queue.append(executor.submit(function, item))
    while queue:
        result = queue.popleft().result()
        if size_of is not None:
            ahead = max(1, min(depth, budget // max(1, size_of(result))))
        for item in itertools.islice(iterator, max(0, ahead - len(queue))):
            queue.append(executor.submit(function, item))
        yield result


def predict_files(predictor: Predictor, paths: list[Path], options: PredictOptions) -> Iterator[PredictResult]:
    """Predict every path; a failing input yields an error result and the batch goes on."""
    unknown = set(options.save) - set(SAVE_KINDS)
    if unknown or not options.save:
        raise UsageError(f"--save {','.join(options.save)}: choose from {', '.join(SAVE_KINDS)}")
    paths = select_shard(paths, options.shard)
    with_probs = "probs" in options.save
    targets = {path: output_paths(path, options, predictor.probability_channels) for path in paths}
    _check_collisions(targets)
    try:
        options.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{options.out_dir}: cannot create the output folder ({err.strerror})") from None
    if not os.access(options.out_dir, os.W_OK):
        raise OutputError(f"{options.out_dir}: the output folder is not writable; choose another -o folder")
    remove_stale_temp_files(options.out_dir)  # left by a predict that was killed while writing

    todo = []
    for path in paths:
        if options.skip_existing and all(t.exists() for t in targets[path].values()):
            yield PredictResult(path, "skipped", {k: str(v) for k, v in targets[path].items()})
        else:
            todo.append(path)

    io_threads = max(2, min(8, (os.cpu_count() or 2) // 2))  # OpenCV decodes and encodes without the GIL
    with ThreadPoolExecutor(max_workers=io_threads) as readers, ThreadPoolExecutor(max_workers=io_threads) as writers:
        depth = 2 * (predictor.batch_size or AUTO_BATCH)
        decoded = prefetch(readers, _read, todo, depth=depth,  # runs ahead of the network
                           size_of=lambda read: read[0].nbytes if read[0] is not None else 0)
        pending: list = []  # (path, image) of one size, waiting to fill a batch
        writes: list = []

        def flush():
            images = [image for _, image in pending]
            ids, probs = predictor.predict_batch_maps(images, with_probs)
            for i, (path, image) in enumerate(pending):
                writes.append(writers.submit(_write_outputs, predictor, path, image, ids[i],
                                             None if probs is None else probs[i], options))
            pending.clear()

        for path, (image, error) in zip(todo, decoded):
            if error is not None:
                yield PredictResult(path, "error", error=str(error), exit_code=error.exit_code)
                continue
            try:
                image = match_channels(image, predictor.in_channels, path)
            except DataError as err:
                yield PredictResult(path, "error", error=str(err), exit_code=err.exit_code)
                continue
            if predictor.needs_tiles(image):
                ids, probs = predictor.predict_image_maps(image, path, with_probs)
                writes.append(writers.submit(_write_outputs, predictor, path, image, ids, probs, options))
            else:
                if pending and (pending[0][1].shape != image.shape or len(pending) >= predictor.images_per_forward(*image.shape[:2])):
                    flush()
                pending.append((path, image))
            # yield finished writes; wait for them when too many masks would pile up in memory
            held = depth if image.nbytes < PREFETCH_BYTES // 2 else 1  # huge images: one write behind
            while writes and (writes[0].done() or len(writes) > held):
                yield writes.pop(0).result()
        if pending:
            flush()
        for future in writes:
            yield future.result()
