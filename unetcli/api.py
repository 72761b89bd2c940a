"""The Python API: what the command line does, for notebooks and scripts (napari, QuPath, Fiji's Python).

    import unetcli
    model = unetcli.load("runs/cells")              # a model folder or a run folder (its model-best/)
    mask = model.predict(image)                     # H x W (x 3 for colour masks), in the training masks' values
    probs = model.probabilities(image)              # K x H x W float32 in [0, 1]
    objects = model.instances(image)                # H x W uint16: 0 background, 1..N one id per object
    for event in unetcli.train("data/", out="runs/cells", epochs=20):
        print(event)                                # DataReady, BatchDone, EpochDone, ..., TrainingDone

Images are numpy arrays as OpenCV/Pillow/scikit-image give them: H x W or H x W x C, uint8, uint16 or float32,
channels in RGB order, any size (large ones are predicted in overlapping tiles, as `unetcli predict` does).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import DataError


class Model:
    """A trained model folder, applied exactly as `unetcli predict` applies it."""

    def __init__(self, predictor):
        self.predictor = predictor

    @classmethod
    def load(cls, path: str | Path, **options) -> Model:
        """`options`: device, precision, tile, overlap, tta, threshold, batch_size (as predict's flags)."""
        from .checkpoint import resolve_model_dir
        from .predictor import Predictor

        return cls(Predictor.from_folder(resolve_model_dir(Path(path)), **options))

    @property
    def classes(self) -> dict[str, object]:
        """Class name -> its mask value (gray level, palette index or (r, g, b)), in class-id order."""
        return {c.name: c.value for c in self.predictor.class_map.classes}

    def predict_ids(self, image: np.ndarray) -> np.ndarray:
        """Class ids 0..K-1 (H x W uint8)."""
        return self.predictor.predict_image(_as_image(image), "image")

    def predict(self, image: np.ndarray) -> np.ndarray:
        """The mask in the training masks' own values (what `unetcli predict` writes to <stem>.png)."""
        return self.predictor.class_map.encode(self.predict_ids(image))

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Per-class probabilities, K x H x W float32 (K = 1 for binary models: the foreground's), from the
        same logits as the mask; 16-bit steps (1/65535), as `--save probs` writes them."""
        from .predictor import PROB_SCALE

        _, maps = self.predictor.predict_image_maps(_as_image(image), "image", probs=True)
        return maps.astype(np.float32) / PROB_SCALE


    def instances(self, image: np.ndarray, objects: list[str] | None = None, split: str = "auto",
                  min_size: int | None = None) -> np.ndarray:
        """One id per object (H x W uint16, uint32 beyond 65535 objects; 0 = background), as `unetcli predict
        --save instances` writes it: `objects` class names (default: every class but the background and a border
        class), `split` auto | off, objects under `min_size` pixels dropped (default: as predict)."""
        from .instances import DEFAULT_MIN_SIZE, InstanceOptions, label_instances

        options = InstanceOptions(objects=None if objects is None else tuple(objects), split=split,
                                  min_size=DEFAULT_MIN_SIZE if min_size is None else min_size)
        return label_instances(self.predict_ids(image), self.predictor.class_map, options).image()


def _as_image(image) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise DataError(f"image of shape {array.shape}: give H x W or H x W x C (C = 1, 3 or 4)")
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype not in (np.uint8, np.uint16, np.float32):
        raise DataError(f"image of type {array.dtype}: give uint8, uint16 or float32 pixels")
    return np.ascontiguousarray(array)


def load(path: str | Path, **options) -> Model:
    """Load a model folder (or a run folder: its model-best/). See `Model.load`."""
    return Model.load(path, **options)


def train(data: str | Path | None = None, **options) -> Iterator:
    """Train as `unetcli train` does; `options` are its flags' names (out, epochs, encoder, ...), also those of a
    run.yaml. Options are validated before any data is read. Yields the training events; the last one,
    TrainingDone, says where model-best/ is. With folds=K (K >= 2) every fold trains in turn, as `train --folds K`
    does: each fold's events follow a folds.FoldStarted, and folds.CrossValidated ends them."""
    from .folds import train_folds
    from .options import TrainOptions
    from .training import train as run_training

    values = {**options, "data": data} if data is not None else options
    checked = TrainOptions.from_values(values, "unetcli.train()").validate()
    return train_folds(checked) if checked.folds > 1 and not checked.fold else run_training(checked)
