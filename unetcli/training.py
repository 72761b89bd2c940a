"""The training loop, as a generator of events: the CLI renders them, tests and scripts consume them.

One epoch = `samples_per_epoch` random crops (at least one per training image). After each epoch the
whole validation images are predicted exactly as `unetcli predict` would (same Predictor), scored, and
`model-last/` (with the full training state) and, when the score improved, `model-best/` are written.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CompileFailedWarning, UnetcliError, first_line
from .images import encode_png
from .masks import ClassMap
from .metrics import confusion_matrix, counts_from_confusion, nanmean, scores_from_counts
from .options import TrainOptions
from .report import example_grid
from .runfolder import epoch_row, row_metrics, write_history, write_run_yaml
from .session import Clock, TrainingSession, set_up


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
    ignored_pixels: int = 0


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


def _learning_rate(base: float, progress: float, warmup: float = 0.03) -> float:
    """Linear warm-up, then cosine decay to 1 % of the base rate; progress runs from 0 to 1."""
    if progress < warmup:
        return base * max(progress / warmup, 0.01)
    t = min((progress - warmup) / (1 - warmup), 1.0)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


EXAMPLES = 4  # validation images shown in model-best/val_examples.png


def validate(predictor, samples, loss_fn, *, num_classes: int) -> tuple[float, np.ndarray, list]:
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
    from .runtime import StopRequest

    session = set_up(options)
    scan = session.data.scan
    yield DataReady(len(session.data.train_pairs), len(session.data.val_pairs), scan.class_map, scan.class_pixels,
                    scan.in_channels, str(session.dist.device), session.precision.name, len(session.loader),
                    scan.ignored_pixels)
    if session.dist.main:
        session.run_dir.mkdir(parents=True, exist_ok=True)
        write_run_yaml(session.run_dir, options)
    session.clock = Clock(time.monotonic(), session.progress.epoch)
    session.stop = StopRequest()
    try:
        reason = yield from _epochs(session)
        session.dist.barrier()
    finally:
        session.stop.restore()
        session.dist.close()
    progress = session.progress
    yield TrainingDone(session.run_dir, progress.best_epoch, progress.best_score, reason, progress.best_metrics)


def _epochs(session: TrainingSession) -> Generator[Any, None, str]:
    """Train the epochs left; yields BatchDone and EpochDone, returns why it ended ('completed', 'early stop', 'time limit')."""
    for epoch in range(session.progress.epoch + 1, session.options.epochs + 1):
        epoch_start = time.monotonic()
        running, lr = yield from _train_epoch(session, epoch)
        tail_start = time.monotonic()
        done = _end_epoch(session, epoch, running, lr=lr, epoch_start=epoch_start)
        session.clock.tail = time.monotonic() - tail_start
        yield done
        reason = _stop_reason(session, epoch)
        if reason:
            return reason
    return "completed"


def _train_epoch(session: TrainingSession, epoch: int) -> Generator[BatchDone, None, tuple[list[float], float]]:
    """One epoch of steps, yielding BatchDone; returns the step losses and the last learning rate. Under
    --time-limit an epoch longer than the time left ends early, leaving time to validate and save it."""
    options, dist, clock = session.options, session.dist, session.clock
    session.trained.train()
    running, lr = [], options.lr
    # per-epoch seeds: an epoch draws the same crops and augmentations whether or not the run was resumed
    session.generator.manual_seed(options.seed * 100003 + epoch)
    session.train_pipeline.set_random_seed(options.seed * 100003 + epoch + 7919 * dist.rank)
    if session.sampler is not None:
        session.sampler.set_epoch(epoch)
    steps = len(session.loader)
    for step, batch in enumerate(session.loader, 1):
        _stop_if_requested(session, epoch)
        lr = _set_learning_rate(session, steps * options.epochs)
        running.append(_step(session, batch, first=not running))
        session.progress.step += 1
        yield BatchDone(epoch, step, steps, running[-1])
        if options.time_limit and dist.from_main(time.monotonic() - clock.start + clock.tail > options.time_limit):
            break
    return running, lr


def _stop_if_requested(session: TrainingSession, epoch: int) -> None:
    """Within an epoch, on a stop request (on any rank): save model-last/ as of the last epoch and stop."""
    progress = session.progress
    if session.dist.any(session.stop.requested is not None):
        _save_last(session, progress.history[-1] if progress.history else {})
        raise TrainingInterrupted(
            f"interrupted ({session.stop.requested or 'by another rank'}) in epoch {epoch}; model-last/ holds the "
            f"state after {progress.step} steps. Resume with: unetcli train --resume {session.run_dir}")


def _set_learning_rate(session: TrainingSession, total_steps: int) -> float:
    """The scheduled rate for the next step, by steps done or, under --time-limit, by the clock if that is further."""
    options = session.options
    fraction = session.progress.step / max(total_steps, 1)
    if options.time_limit:
        fraction = max(fraction, (time.monotonic() - session.clock.start) / options.time_limit)
    lr = _learning_rate(options.lr, fraction)
    for group in session.optimizer.param_groups:
        group["lr"] = lr
    return lr


def _step(session: TrainingSession, batch, first: bool) -> float:
    """One step; a torch.compile'd model that fails on an epoch's first step falls back to eager, with a warning."""
    try:
        return _train_step(session, session.trained, batch)
    except Exception as err:  # torch.compile fails at its first call (no C++ compiler, ...)
        if session.trained is session.eager or not first:
            raise
        session.trained = session.eager
        warnings.warn(CompileFailedWarning(first_line(err, 200), "training"), stacklevel=1)
        return _train_step(session, session.trained, batch)


def _train_step(session: TrainingSession, model, batch) -> float:
    """One optimisation step on one batch; returns the loss."""
    import torch

    from .model import forward_with_consistency

    options, precision, device = session.options, session.precision, session.dist.device
    x, y, weight = (t.to(device, non_blocking=True) for t in batch)
    if precision.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    extra = 0.0
    with precision.autocast(device):
        if options.consistency:
            logits, penalty = forward_with_consistency(model, x, session.class_map.is_binary)
            extra = options.consistency * penalty
        else:
            logits = model(x)
    loss = session.loss_fn(logits, y, weight if options.border_weight else None) + extra
    session.optimizer.zero_grad(set_to_none=True)
    session.scaler.scale(loss).backward()
    session.scaler.step(session.optimizer)
    session.scaler.update()
    return float(loss.detach())


def _end_epoch(session: TrainingSession, epoch: int, running: list[float], *, lr: float, epoch_start: float) -> EpochDone:
    """Validate (rank 0), record the epoch, write model-best/ (when it improved), model-last/ and the history."""
    dist, class_map = session.dist, session.class_map
    train_loss = dist.mean(float(np.mean(running)))
    val_loss, dice, iou, score, examples = None, [], [], -train_loss, []
    if session.data.val_scan is not None and dist.main:
        val_loss, matrix, examples = validate(session.predictor, session.data.val_scan.samples, session.loss_fn,
                                              num_classes=class_map.num_classes)
        scores = scores_from_counts(counts_from_confusion(matrix))
        dice, iou = [float(v) for v in scores["dice"]], [float(v) for v in scores["iou"]]
        score = nanmean(dice)
    seconds = time.monotonic() - epoch_start
    row = epoch_row(epoch, train_loss, val_loss, lr=lr, seconds=seconds, names=class_map.names, dice=dice, iou=iou)
    is_best = session.progress.end_epoch(row, score, session.options.min_delta)
    if dist.main:
        if is_best:
            _save_best(session, row_metrics(row), examples)
        _save_last(session, row_metrics(row))
        write_history(session.run_dir, session.progress.history)
    return EpochDone(epoch, session.options.epochs, train_loss, val_loss, dice, iou, score, is_best, lr, seconds)


def _save_best(session: TrainingSession, metrics: dict, examples: list) -> None:
    """model-best/, with a grid of the first validation images, their truth and prediction."""
    from .checkpoint import save_model_folder

    colours = session.class_map.colourise(np.arange(session.class_map.num_classes, dtype=np.uint8))
    grid = {"val_examples.png": encode_png(example_grid(examples, colours))} if examples else {}
    meta = dataclasses.replace(session.meta, epoch=session.progress.epoch, metrics=metrics)
    save_model_folder(session.run_dir / "model-best", session.model, meta, extra_files=grid)


def _save_last(session: TrainingSession, metrics: dict) -> None:
    """model-last/ with the training state that --resume continues from exactly (rank 0 only)."""
    import torch

    from .checkpoint import save_model_folder

    if session.dist.main:
        progress = session.progress
        state = {**asdict(progress), "optimizer": session.optimizer.state_dict(), "scaler": session.scaler.state_dict(),
                 "torch_rng": torch.get_rng_state()}
        meta = dataclasses.replace(session.meta, epoch=progress.epoch, metrics=metrics)
        save_model_folder(session.run_dir / "model-last", session.model, meta, train_state=state)


def _stop_reason(session: TrainingSession, epoch: int) -> str | None:
    """After an epoch (all ranks agree): stop on a stop request (model-last/ is saved), by patience, or when
    another epoch would overrun --time-limit; None to go on."""
    options, dist, clock = session.options, session.dist, session.clock
    if dist.any(session.stop.requested is not None):
        raise TrainingInterrupted(f"interrupted ({session.stop.requested or 'by another rank'}) after epoch {epoch}; "
                                  f"model-last/ is saved. Resume with: unetcli train --resume {session.run_dir}")
    elapsed = time.monotonic() - clock.start
    if dist.from_main(options.patience is not None and session.progress.stale >= options.patience):
        return "early stop"
    if dist.from_main(bool(options.time_limit) and elapsed + elapsed / (epoch - clock.epochs_before) > (options.time_limit or 0)):
        return "time limit"
    return None
