"""The training loop, as a generator of events: the CLI renders them, tests and scripts consume them.

One epoch = `samples_per_epoch` random crops (at least one per training image). After each epoch the
whole validation images are predicted exactly as `unetcli predict` would (same Predictor), scored, and
`model-last/` (with the full training state) and, when the score improved, `model-best/` are written. A
temperature is fitted on a sample of the validation pixels' logits of each epoch (calibration.py; no extra
pass) and stored with that epoch's model folders; without validation the models keep temperature 1.0.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import EPOCH_FIT_PIXELS, PixelSample
from .errors import CompileFailedWarning, SaveFailedError, UnetcliError, UnetcliWarning, first_line
from .images import encode_png
from .masks import ClassMap
from .metrics import confusion_matrix, counts_from_confusion, nanmean, scores_from_counts
from .modelmeta import ModelMeta
from .options import TrainOptions
from .report import example_grid
from .runfolder import epoch_row, row_metrics, write_history, write_run_yaml
from .session import Clock, TrainingSession, set_up


class TrainingInterrupted(UnetcliError):
    exit_code = 130


@dataclass(frozen=True)
class Phase:
    """Work other than training steps, announced as it starts: 'reading data' (before the data is read and
    scanned), 'validating' and 'saving' (after each epoch's steps)."""

    name: str
    epoch: int = 0
    detail: str = ""  # the data folder, the number of validation images, the folders being saved


@dataclass(frozen=True)
class Planned:
    """The options the planner chose (planner.Plan), before the run starts."""

    plan: Any


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
    epochs: int = 0  # the run's last epoch (--epochs)
    time_limit: float | None = None  # seconds
    images_per_step: int = 0  # crops per step over all ranks
    cache: Any = None  # cache.CachePlan: where the decoded pairs live, and the memory that takes


@dataclass(frozen=True)
class BatchDone:
    epoch: int
    step: int
    steps: int
    loss: float
    seconds: float = 0.0  # since the epoch's first step began


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
    calibration: dict | None = None  # model-best's fitted temperature (calibration.Calibration.to_dict); None: not fitted


def _learning_rate(base: float, progress: float, warmup: float = 0.03) -> float:
    """Linear warm-up, then cosine decay to 1 % of the base rate; progress runs from 0 to 1."""
    if progress < warmup:
        return base * max(progress / warmup, 0.01)
    t = min((progress - warmup) / (1 - warmup), 1.0)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


EXAMPLES = 4  # validation images shown in model-best/val_examples.png


def validate(predictor, samples, loss_fn, *, num_classes: int, pixels=None) -> tuple[float, np.ndarray, list]:
    """Mean loss over validation images, their summed confusion matrix, and (image, truth, prediction) for
    the first few. Images are predicted whole, as `predict` does for images that fit a tile. `pixels` (a
    calibration.PixelSample) gathers a sample of the logits and labels for the temperature fit."""
    import torch

    matrix = np.zeros((num_classes, num_classes), np.int64)
    losses, examples = [], []
    for sample in samples:
        height, width = sample.image.shape[:2]
        logits = predictor.logits(predictor.preprocess(sample.image)[None], height, width)
        target = torch.from_numpy(sample.mask.astype(np.int64))[None]
        losses.append(float(loss_fn(logits, target)))
        if pixels is not None:
            pixels.add(logits[0].numpy(), sample.mask)
        pred = predictor.ids_from_logits(logits)[0]
        matrix += confusion_matrix(pred, sample.mask, num_classes)
        if len(examples) < EXAMPLES:
            examples.append((sample.image, sample.mask, pred))
    return float(np.mean(losses)), matrix, examples


def train(options: TrainOptions) -> Iterator:
    """Run training; yields Phase('reading data'), DataProgress, Planned (unless --no-plan or resumed), DataReady, then per epoch BatchDone, Phase('validating'),
    Phase('saving') and EpochDone, and finally TrainingDone."""
    from .runtime import StopRequest

    started = time.monotonic()  # --time-limit counts from here: reading the data and planning are part of the run
    yield Phase("reading data", detail=str(options.data if options.data is not None else options.images))
    session = yield from set_up(options)  # DataProgress while the data is read
    if session.plan is not None:
        yield Planned(session.plan)
    scan = session.data.scan
    yield DataReady(len(session.data.train_pairs), len(session.data.val_pairs), scan.class_map, scan.class_pixels,
                    scan.in_channels, str(session.dist.device), session.precision.name, len(session.loader),
                    scan.ignored_pixels, epochs=session.options.epochs, time_limit=session.options.time_limit,
                    images_per_step=session.options.batch_size * session.dist.world, cache=session.data.cache)
    if session.dist.main:
        session.run_dir.mkdir(parents=True, exist_ok=True)
        write_run_yaml(session.run_dir, session.options)
        _check_saving(session)
    session.clock = Clock(started, session.progress.epoch, epochs_start=time.monotonic())
    session.stop = StopRequest()
    try:
        reason = yield from _epochs(session)
        session.dist.barrier()
    finally:
        session.stop.restore()
        session.dist.close()
    progress = session.progress
    yield TrainingDone(session.run_dir, progress.best_epoch, progress.best_score, reason, progress.best_metrics,
                       calibration=_best_calibration(session))


def _best_calibration(session: TrainingSession) -> dict | None:
    """How model-best/'s temperature was fitted (None: not fitted, i.e. no validation set)."""
    from .checkpoint import read_meta

    best = session.run_dir / "model-best"
    return read_meta(best).calibration if session.dist.main and best.is_dir() else None


def _epochs(session: TrainingSession) -> Generator[Any, None, str]:
    """Train the epochs left; yields BatchDone and EpochDone, returns why it ended ('completed', 'early stop', 'time limit')."""
    for epoch in range(session.progress.epoch + 1, session.options.epochs + 1):
        epoch_start = time.monotonic()
        running, lr = yield from _train_epoch(session, epoch)
        tail_start = time.monotonic()
        done = yield from _end_epoch(session, epoch, running, lr=lr, epoch_start=epoch_start)
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
    steps, start = len(session.loader), time.monotonic()
    for step, batch in enumerate(session.loader, 1):
        _stop_if_requested(session, epoch)
        lr = _set_learning_rate(session, steps * options.epochs)
        running.append(_step(session, batch, first=not running))
        session.progress.step += 1
        yield BatchDone(epoch, step, steps, running[-1], time.monotonic() - start)
        if options.time_limit and dist.from_main(time.monotonic() - clock.start + clock.tail > options.time_limit):
            break
    return running, lr


def _stop_if_requested(session: TrainingSession, epoch: int) -> None:
    """Within an epoch, on a stop request (on any rank): save model-last/ as of the last epoch and stop."""
    progress = session.progress
    if session.dist.any(session.stop.requested is not None):
        metrics = progress.history[-1] if progress.history else {}  # mid-epoch weights: no temperature fitted for them
        _save_last(session, dataclasses.replace(session.meta, epoch=progress.epoch, metrics=metrics))
        raise TrainingInterrupted(
            f"interrupted ({session.stop.requested or 'by another rank'}) in epoch {epoch}; model-last/ holds the "
            f"state after {progress.step} steps. Resume with: unetcli train --resume {session.run_dir}")


def _set_learning_rate(session: TrainingSession, total_steps: int) -> float:
    """The scheduled rate for the next step, by steps done or, under --time-limit, by the clock if that is further."""
    options = session.options
    fraction = session.progress.step / max(total_steps, 1)
    if options.time_limit:
        fraction = max(fraction, session.clock.training_fraction(options.time_limit, time.monotonic()))
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


def _end_epoch(session: TrainingSession, epoch: int, running: list[float], *, lr: float,
               epoch_start: float) -> Generator[Phase, None, EpochDone]:
    """Validate (rank 0), record the epoch, write model-best/ (when it improved), model-last/ and the history."""
    dist, class_map = session.dist, session.class_map
    train_loss = dist.mean(float(np.mean(running)))
    val_loss, dice, iou, score, examples, calibration = None, [], [], -train_loss, [], None
    if session.data.val_scan is not None and dist.main:
        count = len(session.data.val_scan.samples)
        yield Phase("validating", epoch, f"{count} image{'' if count == 1 else 's'}")
        pixels = PixelSample(count, class_map.is_binary, EPOCH_FIT_PIXELS)
        val_loss, matrix, examples = validate(session.predictor, session.data.val_store, session.loss_fn,
                                              num_classes=class_map.num_classes, pixels=pixels)
        scores = scores_from_counts(counts_from_confusion(matrix))
        dice, iou = [float(v) for v in scores["dice"]], [float(v) for v in scores["iou"]]
        score = nanmean(dice)
        calibration = pixels.calibrate(source=f"validation set, epoch {epoch}")
    seconds = time.monotonic() - epoch_start
    row = epoch_row(epoch, train_loss, val_loss, lr=lr, seconds=seconds, names=class_map.names, dice=dice, iou=iou)
    is_best = session.progress.end_epoch(row, score, session.options.min_delta)
    if dist.main:
        yield Phase("saving", epoch, "model-best/, model-last/" if is_best else "model-last/")
        meta = dataclasses.replace(session.meta, epoch=session.progress.epoch, metrics=row_metrics(row))
        meta = meta.calibrated(calibration) if calibration is not None else meta
        if is_best:
            _save_best(session, meta, examples)
        _save_last(session, meta)
        write_history(session.run_dir, session.progress.history)
    return EpochDone(epoch, session.options.epochs, train_loss, val_loss, dice, iou, score, is_best, lr, seconds)


def _save_best(session: TrainingSession, meta: ModelMeta, examples: list) -> None:
    """model-best/, with a grid of the first validation images, their truth and prediction."""
    from .checkpoint import save_model_folder

    colours = session.class_map.colourise(np.arange(session.class_map.num_classes, dtype=np.uint8))
    grid = {"val_examples.png": encode_png(example_grid(examples, colours))} if examples else {}
    _saved(session, "model-best/",
           lambda: save_model_folder(session.run_dir / "model-best", session.model, meta, extra_files=grid))


def _save_last(session: TrainingSession, meta: ModelMeta) -> None:
    """model-last/ with the training state that --resume continues from exactly (rank 0 only)."""
    from .checkpoint import save_model_folder

    if session.dist.main:
        state = _train_state(session)
        _saved(session, "model-last/", lambda: save_model_folder(session.run_dir / "model-last", session.model, meta, train_state=state))


def _train_state(session: TrainingSession) -> dict:
    import torch

    return {**asdict(session.progress), "optimizer": session.optimizer.state_dict(), "scaler": session.scaler.state_dict(),
            "torch_rng": torch.get_rng_state()}


def _check_saving(session: TrainingSession) -> None:
    """Before the first step, a trial save: the first folder an epoch saves (model-best/), with the training state
    model-last/ adds, written to its temporary name and deleted. A save that cannot work (a package smp's save
    needs, a full or read-only disk) fails in a second, not after the first epoch; the trial costs one save
    (0.03-0.13 s for a resnet34 U-Net on a local disk)."""
    from .checkpoint import save_model_folder

    state = _train_state(session)
    _saved(session, "model-best/ (a trial save before training)",
           lambda: save_model_folder(session.run_dir / "model-best", session.model, session.meta, train_state=state, trial=True))


SAVE_RETRY_PAUSE = 2.0  # seconds before the second try of a failed save (a busy disk or network share)


def _saved(session: TrainingSession, what: str, save: Callable[[], None]) -> None:
    """Run `save`, once more if it fails (with a warning), and end the run with SaveFailedError if that fails
    too. A failed try leaves the previous folder as it was (checkpoint.replace_folder)."""
    try:
        save()
        return
    except Exception as err:  # noqa: BLE001 - OutputError (disk full, permissions) or whatever smp's save raises (ImportError, ...)
        first = err
    time.sleep(SAVE_RETRY_PAUSE)
    try:
        save()
    except Exception as err:
        raise SaveFailedError(f"saving {what} failed twice ({_cause(err)}); {_what_is_kept(session)}") from err
    warnings.warn(UnetcliWarning(f"saving {what} failed ({_cause(first)}); it worked at the second try"), stacklevel=2)


def _cause(err: Exception) -> str:
    return str(err) if isinstance(err, UnetcliError) else first_line(err, 200)


def _what_is_kept(session: TrainingSession) -> str:
    """Where a run whose save failed can go on from."""
    from .checkpoint import TRAIN_STATE_FILE, read_meta

    run, last = session.run_dir, session.run_dir / "model-last"
    if (last / TRAIN_STATE_FILE).is_file():
        return (f"{last} still holds epoch {read_meta(last).epoch}, unchanged; once the cause is fixed, "
                f"resume with: unetcli train --resume {run}")
    trained = "nothing was trained yet" if session.progress.epoch == 0 else "no epoch is saved to resume from"
    return f"{trained}; once the cause is fixed, train again (add --overwrite to reuse {run})"


def _stop_reason(session: TrainingSession, epoch: int) -> str | None:
    """After an epoch (all ranks agree): stop on a stop request (model-last/ is saved), by patience, or when
    less than half of another epoch fits in --time-limit; None to go on."""
    options, dist, clock = session.options, session.dist, session.clock
    if dist.any(session.stop.requested is not None):
        raise TrainingInterrupted(f"interrupted ({session.stop.requested or 'by another rank'}) after epoch {epoch}; "
                                  f"model-last/ is saved. Resume with: unetcli train --resume {session.run_dir}")
    elapsed = time.monotonic() - clock.start
    if dist.from_main(options.patience is not None and session.progress.stale >= options.patience):
        return "early stop"
    # another epoch starts when at least half of it fits: the step loop cuts it at the limit, leaving time to
    # validate and save, so the end of the budget is used instead of left idle
    if dist.from_main(bool(options.time_limit) and elapsed + clock.epoch_seconds(epoch) / 2 > (options.time_limit or 0)):
        return "time limit"
    return None
