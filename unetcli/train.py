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
import os
import random
import warnings
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .options import TrainOptions, parse_class_weights
from .data import DatasetScan, Pair, find_pairs, require_clean, resolve_layout, scan_dataset, split_pairs
from .errors import CompileFailedWarning, OutputError, UnetcliError, UsageError, first_line
from .images import encode_png, to_unit_range, write_bytes_atomic, write_png
from .masks import IGNORE_ID, ClassMap
from .metrics import confusion_matrix, counts_from_confusion, nanmean, scores_from_counts
from .report import example_grid, training_curves
from .weightmap import border_weight_map


class TrainingInterrupted(UnetcliError):
    exit_code = 130


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


def _check_run_folder(options: TrainOptions) -> None:
    """A new run needs an empty (or new) folder that can be created; a resumed run reuses its folder."""
    out = Path(options.out)
    if options.resume:
        return
    if out.exists() and any(out.iterdir()) and not options.overwrite:
        raise UsageError(f"{out}: the run folder already exists and is not empty; choose another -o or pass --overwrite")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise OutputError(f"{out}: cannot create the run folder ({parent} is a file, not a folder); choose another -o")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{out}: cannot create the run folder ({parent} is not writable); choose another -o")


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

    from .model import forward_with_consistency

    x, y, weight = (t.to(device, non_blocking=True) for t in batch)
    if precision.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    extra = 0.0
    with precision.autocast(device):
        if options.consistency:
            logits, penalty = forward_with_consistency(model, x, binary)
            extra = options.consistency * penalty
        else:
            logits = model(x)
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


@dataclass
class _Data:
    train_pairs: list[Pair]
    val_pairs: list[Pair]
    scan: DatasetScan
    val_scan: DatasetScan | None


def _load_data(options: TrainOptions) -> _Data:
    """Pair, split, read and check the training (and validation) data; refuse any problem."""
    images_dir, masks_dir = resolve_layout(options.data, options.images, options.masks)
    pairs = find_pairs(images_dir, masks_dir)
    if options.val is not None:
        train_pairs, val_pairs = pairs, find_pairs(*resolve_layout(options.val))
    else:
        train_pairs, val_pairs = split_pairs(pairs, options.val_split, options.seed)
    scan = scan_dataset(train_pairs, options.mask_mode, options.ignore_index, options.class_map_file, options.classes)
    require_clean(scan, "training")
    val_scan = scan_dataset(val_pairs, class_map=scan.class_map) if val_pairs else None
    if val_scan is not None:
        require_clean(val_scan, "validation")
        if val_scan.in_channels != scan.in_channels:
            raise UsageError(f"validation images have {val_scan.in_channels} channels, training images {scan.in_channels}")
    return _Data(train_pairs, val_pairs, scan, val_scan)


def _model_meta(options: TrainOptions, data: _Data, pipeline_config, eval_pipeline, train_pipeline) -> dict:
    from .model import output_channels
    from .transforms import to_dict

    class_map, scan = data.scan.class_map, data.scan
    return {
        "classes": class_map.to_dict(),
        "in_channels": scan.in_channels,
        "out_channels": output_channels(class_map.num_classes, class_map.is_binary),
        "threshold": 0.5,
        "input": "images are scaled to [0, 1] by their dtype's range (8-bit /255, 16-bit /65535), then normalised",
        "pipeline": {"config": asdict(pipeline_config), "eval": to_dict(eval_pipeline), "train": to_dict(train_pipeline)},
        "tile": {"size": max(4 * options.crop, 1024), "overlap": 0.25},
        "training": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "data": {"train_pairs": len(data.train_pairs), "val_pairs": len(data.val_pairs),
                 "class_pixels": scan.class_pixels, "fingerprint": _fingerprint(data.train_pairs, scan.sizes)},
    }


@dataclass
class _Progress:
    """What model-last/train_state.pt keeps besides the optimiser: enough to continue exactly."""

    epoch: int = 0  # last completed epoch
    step: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    stale: int = 0  # epochs since the last improvement
    best_metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


def _epoch_row(epoch: int, train_loss: float, val_loss: float | None, lr: float, seconds: float,
               names: list[str], dice: list[float], iou: list[float]) -> dict:
    row = {"epoch": epoch, "train_loss": round(train_loss, 6), "val_loss": "" if val_loss is None else round(val_loss, 6),
           "lr": f"{lr:.3g}", "seconds": round(seconds, 2)}
    for name, d, i in zip(names, dice, iou):
        row[f"dice_{name}"], row[f"iou_{name}"] = round(d, 6), round(i, 6)
    return row


def train(options: TrainOptions) -> Iterator:
    """Run training; yields DataReady, BatchDone, EpochDone and finally TrainingDone."""
    import torch

    from .checkpoint import save_model_folder
    from .model import SegmentationLoss, build_model, output_channels
    from .runtime import Distributed, StopRequest, pick_device, pick_precision
    from .predict import Predictor
    from .transforms import PipelineConfig, build_eval, build_train

    if options.epochs < 1 or options.batch_size < 1 or options.crop < 32 or options.crop % 32:
        raise UsageError("--epochs and --batch-size must be >= 1 and --crop a multiple of 32 (>= 32)")
    dist = Distributed(pick_device(options.device))
    device = dist.device
    precision = pick_precision(options.precision, device)
    data = _load_data(options)
    class_map, scan = data.scan.class_map, data.scan
    _check_run_folder(options)
    dist.barrier()  # every rank has checked the folder before rank 0 creates it

    random.seed(options.seed)
    np.random.seed(options.seed)
    torch.manual_seed(options.seed)
    pipeline_config = PipelineConfig(scan.mean, scan.std, options.crop, options.augment, options.foreground_crops)
    train_pipeline, eval_pipeline = build_train(pipeline_config), build_eval(pipeline_config)
    model = build_model(options.encoder, scan.in_channels, output_channels(class_map.num_classes, class_map.is_binary),
                        options.encoder_weights)
    predictor = Predictor(model, class_map, eval_pipeline, scan.in_channels, device, precision)
    model = predictor.model  # moved to the device, in the right memory format
    loss_fn = SegmentationLoss(class_map.is_binary, IGNORE_ID, options.loss,
                               parse_class_weights(options.class_weights, scan.class_pixels)).to(device)
    # fused: one kernel per parameter tensor instead of a dozen (8 ms of a 630 ms CPU step, measured)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=1e-4, fused=device.type in ("cpu", "cuda"))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.name == "fp16")
    progress = _Progress()
    if options.resume:
        state = _restore(Path(options.out) / "model-last", model, optimizer, scaler, class_map)
        progress = _Progress(**{k: state[k] for k in asdict(progress)})
        if progress.epoch >= options.epochs:
            raise UsageError(f"{options.out}: the run already finished {progress.epoch} epochs; "
                             f"raise --epochs above {progress.epoch} to train on")
    eager = trained = dist.wrap(model)
    if options.compile:
        trained = torch.compile(eager)  # compiles at the first step; see the fallback in the loop

    weight_maps = ([border_weight_map(s.mask, options.border_w0, options.border_sigma) for s in scan.samples]
                   if options.border_weight else None)
    dataset = _CropDataset([to_unit_range(s.image) for s in scan.samples], [s.mask for s in scan.samples],
                           weight_maps, train_pipeline, max(options.samples_per_epoch, len(scan.samples)))
    sampler = dist.sampler(dataset, options.seed)
    workers = options.workers if options.workers is not None else (4 if device.type == "cuda" else 0)
    generator = torch.Generator()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=options.batch_size, shuffle=sampler is None, sampler=sampler,
        drop_last=len(dataset) >= options.batch_size * dist.world, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0, generator=generator,
        worker_init_fn=lambda worker: train_pipeline.set_random_seed(options.seed * 1000 + worker + 100 * dist.rank),
    )
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * options.epochs
    yield DataReady(len(data.train_pairs), len(data.val_pairs), class_map, scan.class_pixels, scan.in_channels,
                    str(device), precision.name, steps_per_epoch)

    run_dir = Path(options.out)
    meta = _model_meta(options, data, pipeline_config, eval_pipeline, train_pipeline)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_run_yaml(run_dir, options)
    start = time.monotonic()
    reason = "completed"
    stop = StopRequest()
    done_before, tail = progress.epoch, 0.0  # tail: seconds the last validation + save took

    def save_last(metrics: dict) -> None:
        if dist.main:
            state = {**asdict(progress), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                     "torch_rng": torch.get_rng_state()}
            save_model_folder(run_dir / "model-last", model, {**meta, "epoch": progress.epoch, "metrics": metrics}, state)

    try:
        for epoch in range(progress.epoch + 1, options.epochs + 1):
            epoch_start = time.monotonic()
            trained.train()
            running, lr = [], options.lr
            # per-epoch seeds: an epoch draws the same crops and augmentations whether or not the run was resumed
            generator.manual_seed(options.seed * 100003 + epoch)
            train_pipeline.set_random_seed(options.seed * 100003 + epoch + 7919 * dist.rank)
            if sampler is not None:
                sampler.set_epoch(epoch)
            for step, batch in enumerate(loader, 1):
                if dist.any(stop.requested is not None):
                    save_last(progress.history[-1] if progress.history else {})
                    raise TrainingInterrupted(
                        f"interrupted ({stop.requested or 'by another rank'}) in epoch {epoch}; model-last/ holds the "
                        f"state after {progress.step} steps. Resume with: unetcli train --resume {run_dir}")
                fraction = progress.step / max(total_steps, 1)
                if options.time_limit:
                    fraction = max(fraction, (time.monotonic() - start) / options.time_limit)
                lr = _learning_rate(options.lr, fraction)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                try:
                    running.append(_train_step(trained, batch, loss_fn, optimizer, scaler, precision, device, options,
                                               class_map.is_binary))
                except Exception as err:  # noqa: BLE001 - torch.compile fails at its first call (no C++ compiler, ...)
                    if trained is eager or running:
                        raise
                    trained = eager
                    warnings.warn(CompileFailedWarning(first_line(err, 200), "training"), stacklevel=1)
                    running.append(_train_step(trained, batch, loss_fn, optimizer, scaler, precision, device, options,
                                               class_map.is_binary))
                progress.step += 1
                yield BatchDone(epoch, step, steps_per_epoch, running[-1])
                # an epoch longer than the time left ends early, leaving time to validate and save it
                if options.time_limit and dist.from_main(time.monotonic() - start + tail > options.time_limit):
                    break
            tail_start = time.monotonic()
            train_loss = dist.mean(float(np.mean(running)))

            val_loss, dice, iou, score, examples = None, [], [], -train_loss, []
            if data.val_scan is not None and dist.main:
                val_loss, matrix, examples = validate(predictor, data.val_scan.samples, loss_fn, class_map.num_classes)
                scores = scores_from_counts(counts_from_confusion(matrix))
                dice, iou = [float(v) for v in scores["dice"]], [float(v) for v in scores["iou"]]
                score = nanmean(dice)
            seconds = time.monotonic() - epoch_start
            row = _epoch_row(epoch, train_loss, val_loss, lr, seconds, class_map.names, dice, iou)
            metrics = {k: v for k, v in row.items() if k not in ("lr", "seconds")}
            is_best = score > progress.best_score + options.min_delta
            progress.epoch = epoch
            progress.history.append(row)
            if is_best:
                progress.best_score, progress.best_epoch, progress.stale, progress.best_metrics = score, epoch, 0, metrics
            else:
                progress.stale += 1
            if dist.main:
                if is_best:
                    colours = class_map.colourise(np.arange(class_map.num_classes, dtype=np.uint8))
                    grid = {"val_examples.png": encode_png(example_grid(examples, colours))} if examples else {}
                    save_model_folder(run_dir / "model-best", model, {**meta, "epoch": epoch, "metrics": metrics},
                                      extra_files=grid)
                save_last(metrics)
                _write_history(run_dir / "history.csv", progress.history)
                write_png(run_dir / "curves.png", training_curves(progress.history))
            tail = time.monotonic() - tail_start
            yield EpochDone(epoch, options.epochs, train_loss, val_loss, dice, iou, score, is_best, lr, seconds)
            if dist.any(stop.requested is not None):
                raise TrainingInterrupted(f"interrupted ({stop.requested or 'by another rank'}) after epoch {epoch}; "
                                          f"model-last/ is saved. Resume with: unetcli train --resume {run_dir}")
            elapsed = time.monotonic() - start
            if dist.from_main(options.patience is not None and progress.stale >= options.patience):
                reason = "early stop"
                break
            if dist.from_main(bool(options.time_limit) and elapsed + elapsed / (epoch - done_before) > (options.time_limit or 0)):
                reason = "time limit"
                break
        dist.barrier()
    finally:
        stop.restore()
        dist.close()
    yield TrainingDone(run_dir, progress.best_epoch, progress.best_score, reason, progress.best_metrics)


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
