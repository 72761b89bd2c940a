"""Typed options of `train`, defined once: the CLI declares its flags from these fields (flag, help, default),
`--config FILE.yaml` reads the same keys that a run's `run.yaml` holds, and `validate()` checks every value
before any image is read. Nothing heavy is imported here, so `unetcli --help` stays instant."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

AUGMENT_PRESETS = ("none", "light", "default", "heavy", "elastic")
PATH_FIELDS = ("out", "data", "images", "masks", "val", "class_map_file")
# Options a resumed run may change; everything else must stay as the run was started.
RESUMABLE_CHANGES = ("epochs", "patience", "min_delta", "time_limit", "device", "precision", "workers", "compile",
                     "cache")
CACHE_CHOICES = ("auto", "ram", "disk", "none")  # --cache (cache.py)
CLASS_MAP_HELP = ("Class names and mask values: JSON/YAML {name: value} (a gray level or \\[r,g,b]), or CSV rows "
                  "name,r,g,b | index,name\\[,r,g,b] | name,value.")
NOT_IN_CONFIG = ("resume",)  # run.yaml records whether that run was resumed; a config file cannot ask for it


def option(default, help: str, flag: str | None = None, argument: bool = False):
    """A field with its command-line declaration: `flag` (default --field-name) and help text."""
    return field(default=default, metadata={"help": help, "flag": flag, "argument": argument})


@dataclass(frozen=True)
class TrainOptions:
    out: Path = option(Path("runs/unet"), "Run folder to create (model-best/, model-last/, history.csv).", "-o/--out")
    data: Path | None = option(None, "Folder holding images/ and masks/ (pairs match by file name).", argument=True)
    images: Path | None = option(None, "Images folder (instead of DATA/images).")
    masks: Path | None = option(None, "Masks folder (instead of DATA/masks).")
    val: Path | None = option(None, "Separate validation DATA folder.")
    val_split: float = option(0.2, "Share of pairs held out for validation (seeded).")
    folds: int = option(1, "Cross-validation: K runs in OUT/fold-1..K, each validated on another K-th of the pairs "
                           "(instead of --val-split); OUT then predicts as their ensemble (mean probability).")
    fold: int = option(0, "With --folds K: train fold k alone (1..K) into OUT, as --folds does into OUT/fold-k (one task of a "
                          "job array; a fold's run.yaml has it); 0: every fold.")
    encoder: str = option("resnet34", "Any smp encoder, e.g. resnet18, resnet34, efficientnet-b0.")
    encoder_weights: str = option("none", "none (offline, random init) or e.g. imagenet (downloads).")
    decoder_width: int = option(256, "Channels of the first decoder block, halved at each of the next four, no "
                                     "fewer than 16 (128: a smaller, faster decoder).")
    classes: int | None = option(None, "Number of classes, or auto (from the masks).")
    mask_mode: str = option("auto", "auto | binary | index | palette | rgb | instances (object ids).")
    ignore_index: int | None = option(None, "Mask value to leave out of loss and metrics.")
    class_map_file: Path | None = option(None, CLASS_MAP_HELP, "--class-map")
    epochs: int = option(40, "Epochs to train.")
    batch_size: int = option(8, "Crops per optimisation step.")
    crop: int = option(256, "Training crop side (multiple of 32).")
    lr: float = option(1e-3, "Peak learning rate (AdamW, warm-up + cosine).")
    loss: str = option("dice+ce", "dice, ce, focal joined by +.")
    class_weights: str = option("none", "none | auto (inverse sqrt frequency) | w0,w1,... one per class.")
    border_weight: bool = option(False, "Weight the loss towards thin gaps between touching objects (U-Net paper).")
    border_w0: float = option(10.0, "Border weight strength w0.")
    border_sigma: float = option(5.0, "Border weight width sigma, pixels.")
    consistency: float = option(0.0, "Weight of a flip/rotation invariance term (0 = off).")
    foreground_crops: float = option(0.3, "Share of crops centred on foreground.")
    augment: str = option("default", "none | light | default | heavy | elastic | FILE (Albumentations JSON/YAML).")
    samples_per_epoch: int = option(256, "Random crops per epoch (at least one per image).")
    patience: int | None = option(None, "Stop after N epochs without improvement.")
    min_delta: float = option(0.0, "Improvement that resets --patience.")
    time_limit: float | None = option(None, "Stop cleanly before this much time, e.g. 30m, 2h (seconds in run.yaml).")
    seed: int = option(0, "Seed of the split, the crops and the initialisation.")
    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps.")
    precision: str = option("auto", "auto (bf16 on CPUs/GPUs that have it) | fp32 | bf16 | fp16.")
    workers: int | None = option(None, "DataLoader workers (default 0 on CPU, 4 on GPU).")
    cache: str = option("auto", "Where decoded pairs live: auto (ram when they fit half the available memory, else "
                                "none) | ram | disk (decoded once into OUT/cache, memory-mapped) | none (decoded on demand).")
    compile: bool = option(False, "torch.compile the model (pays on long GPU runs; eager if it fails).")
    overwrite: bool = option(False, "Reuse a non-empty run folder.")
    plan: bool = option(True, "Plan the options you leave out (encoder, decoder width, crop, batch, epochs, samples per "
                              "epoch, augmentation) from the data, this device and --time-limit (else 15 min).",
                        "--plan/--no-plan")
    # names of the options given (flags, a config file, from_values' keys): the plan keeps them. Built directly
    # without it, the options that differ from their defaults count as given (one equal to its default does not).
    set_by_user: frozenset = field(default=frozenset(), compare=False)
    resume: bool = False  # continue `out` from its model-last/ (see `resume_options`); the CLI's --resume RUN

    def __post_init__(self):
        if not self.set_by_user:
            given = {f.name for f in dataclasses.fields(self) if f.name != "set_by_user" and getattr(self, f.name) != f.default}
            object.__setattr__(self, "set_by_user", frozenset(given))

    def validate(self) -> TrainOptions:
        """Refuse any value that cannot work, before data is read: ranges, names, files. Returns self."""
        _check_numbers(self)
        _check_names(self)
        return self

    def to_config(self) -> dict:
        """The options as run.yaml holds them (and --config reads them): plain YAML types, paths as text."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()
                if k != "set_by_user"}

    @classmethod
    def from_values(cls, values: dict, source: str = "options") -> TrainOptions:
        """Options from loosely typed values (a config file, command-line text): each converted to its field's
        type; unknown keys are refused with the valid ones listed."""
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "set_by_user"}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UsageError(f"{source}: unknown option(s) {', '.join(unknown)}; valid keys: {', '.join(known)}")
        return cls(**{k: convert(k, v, source) for k, v in values.items()}, set_by_user=frozenset(values))


def train_option_fields() -> list[dataclasses.Field]:
    """The fields the command line declares (all but `resume`, which the CLI takes as --resume RUN, and
    `set_by_user`)."""
    return [f for f in dataclasses.fields(TrainOptions) if "help" in f.metadata]


def parse_duration(text) -> float | None:
    """'90', '90s', '30m', '2h', '1h30m' (or a number of seconds) -> seconds."""
    if text is None or isinstance(text, (int, float)) and not isinstance(text, bool):
        return None if text is None else float(text)
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", str(text))
    if not parts or not any(parts.groups()):
        raise UsageError(f"--time-limit {text!r}: use e.g. 600, 90s, 30m, 2h or 1h30m")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def parse_classes(text) -> int | None:
    if text is None or text == "auto":
        return None
    if isinstance(text, int) and not isinstance(text, bool) and text >= 1:
        return text
    if not isinstance(text, str) or not text.isdigit() or int(text) < 1:
        raise UsageError(f"--classes {text!r}: use auto or a positive number")
    return int(text)


_SPECIAL = {"time_limit": parse_duration, "classes": parse_classes}


def convert(name: str, value, source: str = "options"):
    """One option's value as its field's type (None stays None)."""
    if name in _SPECIAL:
        return _SPECIAL[name](value)
    if value is None:
        return None
    kind = field_type(TrainOptions.__dataclass_fields__[name])
    if name in PATH_FIELDS:
        return Path(value)
    if kind is bool and isinstance(value, bool) or kind is str and isinstance(value, str):
        return value
    if kind in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if kind is int and value != int(value):
            raise UsageError(f"{source}: {name} {value!r} must be a whole number")
        return kind(value)
    raise UsageError(f"{source}: {name} {value!r} must be {kind.__name__}")


def field_type(f: dataclasses.Field) -> type:
    """The type of a TrainOptions field without its `| None` (annotations are text here)."""
    return {"int": int, "float": float, "str": str, "bool": bool, "Path": Path}[str(f.type).split(" |")[0]]


def flag_of(name: str) -> str:
    """The command-line flag of a TrainOptions field, for messages."""
    meta = TrainOptions.__dataclass_fields__[name].metadata
    return (meta.get("flag") or f"--{name.replace('_', '-')}").split("/")[-1]


def _check_numbers(o: TrainOptions) -> None:
    from .tiling import is_tile_size

    if o.epochs < 1 or o.batch_size < 1 or not is_tile_size(o.crop):
        raise UsageError("--epochs and --batch-size must be >= 1 and --crop a multiple of 32 (>= 32)")
    if not 0 <= o.val_split < 1:
        raise UsageError(f"--val-split {o.val_split} must be in [0, 1)")
    if o.folds < 1:
        raise UsageError(f"--folds {o.folds}: use 2 or more for cross-validation, or 1 (the default) for one run")
    if not 0 <= o.fold <= o.folds or o.fold and o.folds == 1:
        raise UsageError(f"--fold {o.fold}: use 1 to K of --folds K (K >= 2) to train one fold, or 0 for every fold")
    if o.folds > 1 and o.val is not None:
        raise UsageError("--folds and --val do not go together: each fold validates on its own K-th of DATA")
    bounds = {"lr": (o.lr, 0, math.inf), "samples_per_epoch": (o.samples_per_epoch, 1, math.inf),
              "foreground_crops": (o.foreground_crops, 0, 1), "consistency": (o.consistency, 0, math.inf),
              "border_w0": (o.border_w0, 0, math.inf), "border_sigma": (o.border_sigma, 1e-6, math.inf),
              "min_delta": (o.min_delta, 0, math.inf)}
    optional = {"patience": (o.patience, 1), "time_limit": (o.time_limit, 1e-9), "workers": (o.workers, 0),
                "ignore_index": (o.ignore_index, 0)}
    for name, (value, low, high) in bounds.items():
        if not low <= value <= high or name == "lr" and value == 0:
            raise UsageError(f"{flag_of(name)} {value}: out of range (at least {low}{'' if high == math.inf else f', at most {high}'})")
    for name, (value, low) in optional.items():
        if value is not None and value < low:
            raise UsageError(f"{flag_of(name)} {value}: use at least {low}, or leave it out")


def _check_names(o: TrainOptions) -> None:
    """Names and files: mask mode, class weights, augmentation, class map, then (torch) precision, device, loss
    parts and encoder."""
    from .mask_modes import check_mask_mode

    check_mask_mode(o.mask_mode)
    if o.cache not in CACHE_CHOICES:
        raise UsageError(f"--cache {o.cache!r}: use one of {', '.join(CACHE_CHOICES)}")
    if o.class_weights not in ("none", "auto") and not re.fullmatch(r"\s*[\d.eE+-]+(\s*,\s*[\d.eE+-]+)*\s*", o.class_weights):
        raise UsageError(f"--class-weights {o.class_weights!r}: use none, auto, or non-negative numbers separated by "
                         "commas (one per class)")
    if o.augment not in AUGMENT_PRESETS and not Path(o.augment).is_file():
        raise UsageError(f"--augment {o.augment!r}: not a preset ({', '.join(AUGMENT_PRESETS)}) nor an existing file")
    if o.class_map_file is not None and not Path(o.class_map_file).is_file():
        raise UsageError(f"{o.class_map_file}: cannot read the class map (no such file)")
    from .model import check_encoder, decoder_channels, loss_parts  # torch and smp: after the cheap checks
    from .runtime import check_precision, pick_device

    check_precision(o.precision)
    pick_device(o.device)
    loss_parts(o.loss)
    check_encoder(o.encoder)
    decoder_channels(o.decoder_width)


def load_config(path: Path) -> dict:
    """The options in a YAML (or JSON) file such as a run's run.yaml: a mapping of TrainOptions keys."""
    import yaml

    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"{path}: cannot read the config file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: not a YAML file ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path}: a config file holds option: value lines, as a run's run.yaml does")
    return {k: v for k, v in values.items() if k not in NOT_IN_CONFIG}


def resume_options(run: Path, changes: dict) -> TrainOptions:
    """The options a run was started with, plus the allowed `changes`; other changes are refused."""
    from .checkpoint import TRAIN_STATE_FILE, read_meta, recover_folder

    run = Path(run)
    last = run / "model-last"
    if run.is_dir():  # repair a save that was killed half-way (SIGKILL, power loss)
        recover_folder(last)
        recover_folder(run / "model-best")
    if not (last / TRAIN_STATE_FILE).is_file():
        raise UsageError(f"{run}: nothing to resume (no model-last/{TRAIN_STATE_FILE}); start a new run without --resume")
    stored = TrainOptions.from_values({k: v for k, v in read_meta(last).training.items() if k not in NOT_IN_CONFIG},
                                      f"{last}/unetcli.json")
    refused = [f"--{k.replace('_', '-')} {v} (the run has {getattr(stored, k)})" for k, v in changes.items()
               if k not in RESUMABLE_CHANGES and v != getattr(stored, k)]
    if refused:
        raise UsageError(
            f"{run}: cannot change {', '.join(refused)} on resume; only {', '.join(RESUMABLE_CHANGES)} may change. "
            "Start a new run (-o) to train with other options"
        )
    resumable = {k: v for k, v in changes.items() if k in RESUMABLE_CHANGES}
    return dataclasses.replace(stored, **resumable, out=run, resume=True).validate()


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
