"""The training loop, as a generator of events: the CLI renders them, tests and scripts consume them.

One epoch = `samples_per_epoch` random crops (at least one per training image). After each epoch the
whole validation images are predicted exactly as `unetcli predict` would (same Predictor), scored, and
`model-last/` (with the full training state) and, when the score improved, `model-best/` are written.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .data import Pair, find_pairs, require_clean, resolve_layout, scan_dataset, split_pairs
from .checkpoint import TRAIN_STATE_FILE
from .errors import OutputError, UnetcliError, UsageError
from .images import encode_png, to_unit_range, write_bytes_atomic, write_png
from .report import example_grid, training_curves
from .masks import IGNORE_ID, ClassMap
from .weightmap import border_weight_map
from .metrics import confusion_matrix, counts_from_confusion, nanmean, scores_from_counts


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
    overwrite: bool = False
    resume: bool = False  # continue `out` from its model-last/ (see `resume_options`)


# Options a resumed run may change; everything else must stay as the run was started.
RESUMABLE_CHANGES = ("epochs", "patience", "min_delta", "time_limit", "device", "precision", "workers")


class TrainingInterrupted(UnetcliError):
    exit_code = 130


def resume_options(run: Path, changes: dict) -> TrainOptions:
    """The options a run was started with, plus the allowed `changes`; other changes are refused."""
    from .checkpoint import read_meta

    run = Path(run)
    last = run / "model-last"
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


@dataclass(frozen=True)
class DataReady:
    train_pairs: int
    val_pairs: int
    class_map: ClassMap
    class_pixels: list[int]
    in_channels: int
    device: str
    precision: str
    steps_per_epoch: int


@dataclass(frozen=True)
class BatchDone:
    epoch: int
    step: int
    steps: int
    loss: float


@dataclass(frozen=True)
class EpochDone:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float | None
    dice: list[float]  # per class, on the validation set (micro over its pixels)
    iou: list[float]
    score: float  # what model-best is chosen by: mean Dice over classes (or -train loss without validation)
    is_best: bool
    lr: float
    seconds: float


@dataclass(frozen=True)
class TrainingDone:
    run_dir: Path
    best_epoch: int
    best_score: float
    reason: str  # 'completed' | 'early stop' | 'time limit'
    metrics: dict = field(default_factory=dict)


def _fingerprint(pairs: list[Pair], sizes: list[tuple[int, int]]) -> str:
    digest = hashlib.sha256()
    for pair, size in zip(pairs, sizes):
        digest.update(f"{pair.stem}:{size[0]}x{size[1]};".encode())
    return digest.hexdigest()[:16]


def _learning_rate(base: float, progress: float, warmup: float = 0.03) -> float:
    """Linear warm-up, then cosine decay to 1 % of the base rate; progress runs from 0 to 1."""
    if progress < warmup:
        return base * max(progress / warmup, 0.01)
    t = min((progress - warmup) / (1 - warmup), 1.0)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


class _CropDataset:
    """Random training crops: the train pipeline applied to cached, [0, 1]-scaled images (and, with
    border weights, to each mask's precomputed weight map)."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], weights: list[np.ndarray] | None,
                 pipeline, length: int):
        self.images, self.masks, self.weights, self.pipeline, self.length = images, masks, weights, pipeline, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        import torch

        i = index % len(self.images)
        extra = {"weight": self.weights[i]} if self.weights is not None else {}
        out = self.pipeline(image=self.images[i], mask=self.masks[i], **extra)
        image = out["image"] if out["image"].ndim == 3 else out["image"][:, :, None]
        weight = torch.from_numpy(np.ascontiguousarray(out["weight"])) if self.weights is not None else torch.ones(())
        return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.from_numpy(out["mask"]).long(),
                weight)


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


def _prepare_run_folder(options: TrainOptions) -> None:
    out = Path(options.out)
    if options.resume:
        return
    if out.exists() and any(out.iterdir()) and not options.overwrite:
        raise UsageError(f"{out}: the run folder already exists and is not empty; choose another -o or pass --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{out}: cannot create the run folder ({err.strerror})") from None


def _write_history(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buffer.getvalue().encode())


def _train_step(model, batch, loss_fn, optimizer, scaler, precision, device, options: TrainOptions,
                binary: bool) -> float:
    """One optimisation step on one batch; returns the loss."""
    import torch

    from .model import consistency_loss

    x, y, weight = (t.to(device, non_blocking=True) for t in batch)
    if precision.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with precision.autocast(device):
        logits = model(x)
        extra = options.consistency * consistency_loss(model, x, logits, binary) if options.consistency else 0.0
    loss = loss_fn(logits, y, weight if options.border_weight else None) + extra
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


EXAMPLES = 4  # validation images shown in model-best/val_examples.png


def validate(predictor, samples, loss_fn, num_classes: int) -> tuple[float, np.ndarray, list]:
    """Mean loss over validation images, their summed confusion matrix, and (image, truth, prediction) for
    the first few. Images are predicted whole, as `predict` does for images that fit a tile."""
    import torch

    matrix = np.zeros((num_classes, num_classes), np.int64)
    losses, examples = [], []
    for sample in samples:
        height, width = sample.image.shape[:2]
        logits = predictor.logits(predictor.preprocess(sample.image)[None], height, width)
        target = torch.from_numpy(sample.mask.astype(np.int64))[None]
        losses.append(float(loss_fn(logits, target)))
        pred = predictor.ids_from_logits(logits)[0]
        matrix += confusion_matrix(pred, sample.mask, num_classes)
        if len(examples) < EXAMPLES:
            examples.append((sample.image, sample.mask, pred))
    return float(np.mean(losses)), matrix, examples


def train(options: TrainOptions) -> Iterator:
    """Run training; yields DataReady, BatchDone, EpochDone and finally TrainingDone."""
    import torch

    from .checkpoint import save_model_folder
    from .model import SegmentationLoss, build_model, output_channels, pick_device, pick_precision
    from .predict import Predictor
    from .transforms import PipelineConfig, build_eval, build_train, to_dict

    if options.epochs < 1 or options.batch_size < 1 or options.crop < 32 or options.crop % 32:
        raise UsageError("--epochs and --batch-size must be >= 1 and --crop a multiple of 32 (>= 32)")
    device = pick_device(options.device)
    precision = pick_precision(options.precision, device)

    images_dir, masks_dir = resolve_layout(options.data, options.images, options.masks)
    pairs = find_pairs(images_dir, masks_dir)
    if options.val is not None:
        train_pairs, val_pairs = pairs, find_pairs(*resolve_layout(options.val))
    else:
        train_pairs, val_pairs = split_pairs(pairs, options.val_split, options.seed)
    scan = scan_dataset(train_pairs, options.mask_mode, options.ignore_index, options.class_map_file, options.classes)
    require_clean(scan, "training")
    class_map = scan.class_map
    val_scan = scan_dataset(val_pairs, class_map=class_map) if val_pairs else None
    if val_scan is not None:
        require_clean(val_scan, "validation")
        if val_scan.in_channels != scan.in_channels:
            raise UsageError(f"validation images have {val_scan.in_channels} channels, training images {scan.in_channels}")
    _prepare_run_folder(options)

    random.seed(options.seed)
    np.random.seed(options.seed)
    torch.manual_seed(options.seed)
    pipeline_config = PipelineConfig(scan.mean, scan.std, options.crop, options.augment, options.foreground_crops)
    train_pipeline, eval_pipeline = build_train(pipeline_config), build_eval(pipeline_config)
    train_pipeline.set_random_seed(options.seed)

    model = build_model(options.encoder, scan.in_channels, output_channels(class_map.num_classes, class_map.is_binary),
                        options.encoder_weights)
    predictor = Predictor(model, class_map, eval_pipeline, scan.in_channels, device, precision)
    model = predictor.model  # moved to the device, in the right memory format
    class_weights = parse_class_weights(options.class_weights, scan.class_pixels)
    loss_fn = SegmentationLoss(class_map.is_binary, IGNORE_ID, options.loss, class_weights).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.name == "fp16")

    length = max(options.samples_per_epoch, len(scan.samples))
    weight_maps = ([border_weight_map(s.mask, options.border_w0, options.border_sigma) for s in scan.samples]
                   if options.border_weight else None)
    dataset = _CropDataset([to_unit_range(s.image) for s in scan.samples], [s.mask for s in scan.samples],
                           weight_maps, train_pipeline, length)
    workers = options.workers if options.workers is not None else (4 if device.type == "cuda" else 0)
    generator = torch.Generator().manual_seed(options.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=options.batch_size, shuffle=True, drop_last=len(dataset) >= options.batch_size,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0, generator=generator,
        worker_init_fn=lambda worker: train_pipeline.set_random_seed(options.seed * 1000 + worker),
    )
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * options.epochs
    history: list[dict] = []
    best_score, best_epoch, stale, step_count, first_epoch = -math.inf, 0, 0, 0, 1
    best_metrics: dict = {}
    if options.resume:
        state = _restore(Path(options.out) / "model-last", model, optimizer, scaler, class_map)
        history, step_count, first_epoch = state["history"], state["step"], state["epoch"] + 1
        best_score, best_epoch, stale = state["best_score"], state["best_epoch"], state["stale"]
        best_metrics = state.get("best_metrics", {})
        if first_epoch > options.epochs:
            raise UsageError(f"{options.out}: the run already finished {state['epoch']} epochs; "
                             f"raise --epochs above {state['epoch']} to train on")
    yield DataReady(len(train_pairs), len(val_pairs), class_map, scan.class_pixels, scan.in_channels,
                    str(device), precision.name, steps_per_epoch)

    meta_base = {
        "classes": class_map.to_dict(),
        "in_channels": scan.in_channels,
        "out_channels": output_channels(class_map.num_classes, class_map.is_binary),
        "threshold": 0.5,
        "input": "images are scaled to [0, 1] by their dtype's range (8-bit /255, 16-bit /65535), then normalised",
        "pipeline": {"config": asdict(pipeline_config), "eval": to_dict(eval_pipeline), "train": to_dict(train_pipeline)},
        "tile": {"size": max(4 * options.crop, 1024), "overlap": 0.25},
        "training": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "data": {"train_pairs": len(train_pairs), "val_pairs": len(val_pairs), "class_pixels": scan.class_pixels,
                 "fingerprint": _fingerprint(train_pairs, scan.sizes)},
    }
    run_dir = Path(options.out)
    _write_run_yaml(run_dir, options)
    start = time.monotonic()
    reason = "completed"
    stop = _StopRequest()

    def save_last(epoch_done: int, metrics: dict) -> None:
        state = {"epoch": epoch_done, "step": step_count, "best_score": best_score, "best_epoch": best_epoch,
                 "stale": stale, "best_metrics": best_metrics, "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "history": history, "torch_rng": torch.get_rng_state()}
        save_model_folder(run_dir / "model-last", model, {**meta_base, "epoch": epoch_done, "metrics": metrics}, state)

    try:
        for epoch in range(first_epoch, options.epochs + 1):
            epoch_start = time.monotonic()
            model.train()
            running = []
            lr = options.lr
            # per-epoch seeds: an epoch draws the same crops and augmentations whether or not the run was resumed
            generator.manual_seed(options.seed * 100003 + epoch)
            train_pipeline.set_random_seed(options.seed * 100003 + epoch)
            for step, batch in enumerate(loader, 1):
                if stop.requested:
                    save_last(epoch - 1, history[-1] if history else {})
                    raise TrainingInterrupted(
                        f"interrupted ({stop.requested}) in epoch {epoch}; model-last/ holds the state after "
                        f"{step_count} steps. Resume with: unetcli train --resume {run_dir}")
                progress = step_count / max(total_steps, 1)
                if options.time_limit:
                    progress = max(progress, (time.monotonic() - start) / options.time_limit)
                lr = _learning_rate(options.lr, progress)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                running.append(_train_step(model, batch, loss_fn, optimizer, scaler, precision, device, options,
                                           class_map.is_binary))
                step_count += 1
                yield BatchDone(epoch, step, steps_per_epoch, running[-1])
            train_loss = float(np.mean(running))

            if val_scan is not None:
                val_loss, matrix, examples = validate(predictor, val_scan.samples, loss_fn, class_map.num_classes)
                scores = scores_from_counts(counts_from_confusion(matrix))
                dice, iou = [float(v) for v in scores["dice"]], [float(v) for v in scores["iou"]]
                score = nanmean(dice)
            else:
                val_loss, dice, iou, score, examples = None, [], [], -train_loss, []
            is_best = score > best_score + options.min_delta
            seconds = time.monotonic() - epoch_start
            row = {"epoch": epoch, "train_loss": round(train_loss, 6),
                   "val_loss": "" if val_loss is None else round(val_loss, 6), "lr": f"{lr:.3g}",
                   "seconds": round(seconds, 2)}
            for name, d, i in zip(class_map.names, dice, iou):
                row[f"dice_{name}"], row[f"iou_{name}"] = round(d, 6), round(i, 6)
            history.append(row)
            metrics = {k: v for k, v in row.items() if k not in ("lr", "seconds")}
            if is_best:
                best_score, best_epoch, stale, best_metrics = score, epoch, 0, metrics
                colours = class_map.colourise(np.arange(class_map.num_classes, dtype=np.uint8))
                grid = {"val_examples.png": encode_png(example_grid(examples, colours))} if examples else {}
                save_model_folder(run_dir / "model-best", model, {**meta_base, "epoch": epoch, "metrics": metrics},
                                  extra_files=grid)
            else:
                stale += 1
            save_last(epoch, metrics)
            _write_history(run_dir / "history.csv", history)
            write_png(run_dir / "curves.png", training_curves(history))
            yield EpochDone(epoch, options.epochs, train_loss, val_loss, dice, iou, score, is_best, lr, seconds)
            if stop.requested:
                raise TrainingInterrupted(f"interrupted ({stop.requested}) after epoch {epoch}; model-last/ is saved. "
                                          f"Resume with: unetcli train --resume {run_dir}")

            elapsed = time.monotonic() - start
            if options.patience is not None and stale >= options.patience:
                reason = "early stop"
                break
            if options.time_limit and elapsed + elapsed / epoch > options.time_limit:
                reason = "time limit"
                break
    finally:
        stop.restore()
    yield TrainingDone(run_dir, best_epoch, best_score, reason, best_metrics)


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves model-last/ and stops cleanly."""

    def __init__(self):
        self.requested: str | None = None
        self.previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: stop at once
            self.restore()
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def _restore(last: Path, model, optimizer, scaler, class_map: ClassMap) -> dict:
    """Load weights and training state from model-last/ into the freshly built objects."""
    import torch
    from safetensors.torch import load_file

    from .checkpoint import load_train_state, read_meta

    stored = ClassMap.from_dict(read_meta(last)["classes"])
    if stored.to_dict() != class_map.to_dict():
        raise UsageError(f"{last}: the masks now decode to other classes ({class_map.describe_values()}) than when the "
                         f"run started ({stored.describe_values()}); resume with the same data")
    state = load_train_state(last)
    weights = load_file(str(last / "model.safetensors"))
    model.load_state_dict({k: v.to(next(model.parameters()).device) for k, v in weights.items()})
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    return state


def _write_run_yaml(run_dir: Path, options: TrainOptions) -> None:
    import yaml

    resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}
    write_bytes_atomic(run_dir / "run.yaml", yaml.safe_dump(resolved, sort_keys=False).encode())
