"""`unetcli.json`, the typed description of a model folder: one class that owns reading, checking, upgrading
and writing it. Every reader (predict, evaluate, export, info, resume) goes through `ModelMeta.load`.

Format versions:
  1  the first release; readers had to guess entries that could be missing (threshold 0.5, out_channels from
     the class table, tile size 512 with overlap 0.25, fp32 weights).
  2  every entry is present; a folder made to be shared (export --format folder, weights/) holds file names
     instead of the trainer's absolute paths. Version 1 folders are upgraded when read, with the defaults
     version 1 readers used, so they predict exactly as before. `alpha_dropped` and `plan` came later within
     version 2: a folder without them dropped no alpha channel and was not planned. `temperature` and
     `calibration` came later still (issue 14): without them a model is uncalibrated, temperature 1.0. So did
     `intensity` (the training images' intensity statistics for predict's doubt score): without it the doubt
     score has no intensity part.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import ModelFolderError
from .masks import ClassMap
from .tiling import is_overlap, is_tile_size

FORMAT_NAME = "unetcli-model"
FORMAT_VERSION = 2
META_FILE = "unetcli.json"
DEFAULT_THRESHOLD = 0.5
DEFAULT_OVERLAP = 0.25
V1_TILE_SIZE = 512  # the tile size version 1 readers used for a folder without a tile entry
INPUT_NOTE = "images are scaled to [0, 1] by their dtype's range (8-bit /255, 16-bit /65535), then normalised"
PATH_OPTIONS = ("out", "data", "images", "masks", "val", "class_map_file")  # training options that name files


def default_tile_size(crop: int) -> int:
    """The tile size a trained model predicts with by default: four training crops, at least 1024 pixels."""
    return max(4 * crop, 1024)


@dataclass(frozen=True)
class TileDefaults:
    size: int  # images larger than this (either side) are predicted in overlapping tiles
    overlap: float = DEFAULT_OVERLAP  # the least share by which neighbouring tiles overlap


@dataclass(frozen=True)
class ModelMeta:
    classes: ClassMap  # mask values <-> class ids, names, colours
    in_channels: int
    pipeline: dict  # {"config": PipelineConfig fields, "eval": A.to_dict(...), "train": A.to_dict(...)}
    tile: TileDefaults
    threshold: float = DEFAULT_THRESHOLD  # foreground probability threshold of binary models
    training: dict = field(default_factory=dict)  # the resolved training options (run.yaml's keys)
    data: dict = field(default_factory=dict)  # train_pairs, val_pairs, class_pixels, fingerprint
    epoch: int | None = None
    metrics: dict = field(default_factory=dict)  # at save time
    versions: dict = field(default_factory=dict)  # package versions at save time
    weights_dtype: str = "float32"  # float16 for folders exported with --half (loaded as float32)
    alpha_dropped: float | None = None  # the training images' constant alpha, left out of the input (RGBA inputs
    # lose their alpha, RGB ones fit as they are; see channels.py); None: no alpha channel was dropped
    plan: dict | None = None  # what the planner chose and why (planner.Plan.to_dict); None: not planned
    temperature: float = 1.0  # probabilities are sigmoid/softmax(logits / temperature); 1.0: uncalibrated
    calibration: dict | None = None  # how the temperature was fitted (calibration.Calibration.to_dict); None: not fitted
    intensity: dict | None = None  # per channel, the training images' spread of means and log stds
    # (doubt.training_intensity); None: not recorded (older folders), the doubt score then has no intensity part
    input: str = INPUT_NOTE

    @property
    def binary(self) -> bool:
        return self.classes.is_binary

    @property
    def out_channels(self) -> int:
        """Logits of the network: one (sigmoid) for binary models, else one per class (softmax)."""
        return 1 if self.binary else self.classes.num_classes

    @property
    def pipeline_config(self) -> dict:
        return self.pipeline["config"]

    def to_dict(self) -> dict:
        data = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "classes": self.classes.to_dict(),
                "in_channels": self.in_channels, "out_channels": self.out_channels, "threshold": self.threshold,
                "input": self.input, "pipeline": self.pipeline, "tile": dataclasses.asdict(self.tile),
                "training": self.training, "data": self.data, "epoch": self.epoch, "metrics": self.metrics,
                "versions": self.versions, "weights_dtype": self.weights_dtype, "alpha_dropped": self.alpha_dropped,
                "plan": self.plan, "temperature": self.temperature, "calibration": self.calibration,
                "intensity": self.intensity}
        return json.loads(json.dumps(data))  # plain JSON types only (tuples become lists)

    def save(self, folder: Path) -> None:
        """Write unetcli.json into `folder` (a model folder being written; see checkpoint.replace_folder)."""
        (Path(folder) / META_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def calibrated(self, fitted) -> ModelMeta:
        """The same description with a fitted temperature (a calibration.Calibration; stored rounded to 6 digits)."""
        info = fitted.to_dict()
        return dataclasses.replace(self, temperature=info["temperature"], calibration=info)

    def shareable(self) -> ModelMeta:
        """The same description without the trainer's absolute paths: file names only (provenance kept)."""
        training = {k: (Path(v).name if k in PATH_OPTIONS and isinstance(v, str) else v) for k, v in self.training.items()}
        return dataclasses.replace(self, training=training)

    @classmethod
    def load(cls, folder: Path) -> ModelMeta:
        """unetcli.json of a model folder, checked, and upgraded when an older version wrote it."""
        file = Path(folder) / META_FILE
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelFolderError(f"{file}: not valid JSON ({err}); the model folder is damaged") from None
        return cls.from_dict(data, file)

    @classmethod
    def from_dict(cls, data: dict, file: Path | str = META_FILE) -> ModelMeta:
        data = _upgraded(_checked_version(data, file))
        for key in ("classes", "in_channels", "pipeline"):
            if key not in data:
                raise ModelFolderError(f"{file}: lacks the {key!r} entry; the model folder is damaged")
        classes = _check_entries(file, data)
        tile = data["tile"]
        return cls(classes=classes, in_channels=data["in_channels"], pipeline=data["pipeline"],
                   tile=TileDefaults(int(tile["size"]), float(tile["overlap"])), threshold=float(data["threshold"]),
                   training=data["training"], data=data["data"], epoch=data["epoch"], metrics=data["metrics"],
                   versions=data["versions"], weights_dtype=data["weights_dtype"], input=data["input"],
                   alpha_dropped=data.get("alpha_dropped"), plan=data.get("plan"),
                   temperature=float(data.get("temperature", 1.0)), calibration=data.get("calibration"),
                   intensity=data.get("intensity"))


def _checked_version(data, file) -> dict:
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ModelFolderError(f"{file}: not a unetcli model description")
    version = data.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise ModelFolderError(
            f"{file}: model format version {version!r}, but this unetcli ({__version__}) reads versions "
            f"1 to {FORMAT_VERSION}; use the unetcli version that wrote it, or retrain"
        )
    return data


def _upgraded(data: dict) -> dict:
    """A version 1 description as version 2, filled in with the defaults version 1 readers used."""
    if data["format_version"] == FORMAT_VERSION:
        return data
    tile = data.get("tile") if isinstance(data.get("tile"), dict) else {}
    defaults = {"threshold": DEFAULT_THRESHOLD, "input": INPUT_NOTE, "training": {}, "data": {}, "epoch": None,
                "metrics": {}, "versions": {}, "weights_dtype": "float32"}
    upgraded = {**defaults, **data, "format_version": FORMAT_VERSION,
                "tile": {"size": tile.get("size", V1_TILE_SIZE), "overlap": tile.get("overlap", DEFAULT_OVERLAP)}}
    if "classes" in data and "out_channels" not in data:
        upgraded["out_channels"] = _expected_out_channels(data)
    return upgraded


def _expected_out_channels(data: dict) -> int:
    classes = data["classes"]
    return 1 if classes["mode"] == "binary" else len(classes["classes"])


def _check_entries(file, data: dict) -> ClassMap:
    """What predict, evaluate and info rely on, so that a damaged or hand-edited unetcli.json is refused
    with its file named instead of crashing (or predicting garbage) later. Returns the class table."""

    def damaged(what: str) -> ModelFolderError:
        return ModelFolderError(f"{file}: {what}; the model folder is damaged (use an intact copy or retrain)")

    channels = data["in_channels"]
    if not isinstance(channels, int) or isinstance(channels, bool) or not 1 <= channels <= 64:
        raise damaged(f"in_channels is {channels!r}, not a channel count")
    try:
        classes = ClassMap.from_dict(data["classes"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise damaged(f"the class table is invalid ({type(err).__name__}: {err})") from None
    out = data.get("out_channels", _expected_out_channels(data))
    if out != _expected_out_channels(data):
        raise damaged(f"out_channels is {out!r} but the class table ({data['classes']['mode']}, "
                      f"{len(data['classes']['classes'])} classes) needs {_expected_out_channels(data)}")
    _check_pipeline(data["pipeline"], channels, damaged)
    _check_tile(data, damaged)
    _check_temperature(data.get("temperature", 1.0), damaged)
    _check_intensity(data.get("intensity"), channels, damaged)
    alpha = data.get("alpha_dropped")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
        raise damaged(f"alpha_dropped is {alpha!r}, not an alpha value (or null)")
    return classes


def _check_pipeline(pipeline, channels: int, damaged) -> None:
    try:
        steps = pipeline["eval"]["transform"]["transforms"]
        names = [step["__class_fullname__"] for step in steps]
        config = pipeline["config"]
        numbers = [float(v) for v in (*config["mean"], *config["std"])]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise damaged(f"the pipeline description is invalid ({type(err).__name__}: {err})") from None
    if not all(isinstance(name, str) for name in names) or len(numbers) != 2 * channels:
        raise damaged(f"the pipeline description does not fit {channels} input channel(s)")


def _check_tile(data: dict, damaged) -> None:
    tile, threshold = data["tile"], data["threshold"]
    try:
        size, overlap, threshold = int(tile["size"]), float(tile["overlap"]), float(threshold)
    except (KeyError, TypeError, ValueError) as err:
        raise damaged(f"the tile or threshold entry is invalid ({type(err).__name__}: {err})") from None
    if not is_tile_size(size) or not is_overlap(overlap) or not 0 < threshold < 1:
        raise damaged(f"tile size {size} / overlap {overlap} / threshold {threshold} are out of range")


def _check_temperature(temperature, damaged) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise damaged(f"temperature is {temperature!r}, not a positive number")


INTENSITY_KEYS = ("mean", "mean_spread", "log_std", "log_std_spread")


def _check_intensity(intensity, channels: int, damaged) -> None:
    if intensity is None:
        return
    try:
        fits = all(len(intensity[key]) == channels and all(math.isfinite(float(v)) for v in intensity[key])
                   for key in INTENSITY_KEYS)
    except (KeyError, TypeError, ValueError) as err:
        raise damaged(f"the intensity entry is invalid ({type(err).__name__}: {err})") from None
    if not fits:
        raise damaged(f"the intensity entry does not hold {channels} finite value(s) per statistic")
