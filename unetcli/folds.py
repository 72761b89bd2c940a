"""Cross-validation: `train --folds K` trains the same options K times, fold k validating on the k-th of K parts of
the pairs (data.split_pairs), into RUN/fold-1 ... RUN/fold-K (each a normal run folder with model-best/), then
writes RUN/ensemble.json: the folds as one model (ensemble.py) and their cross-validated scores (mean and sd of
each fold's best validation scores).

The first fold is planned (when planning is on); the others reuse its plan, so the folds are alike. With
--time-limit the time left is shared out evenly among the folds still to train.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import ENSEMBLE_FILE
from .errors import UsageError
from .options import TrainOptions

SCORE = "mean Dice over classes on the fold's validation pairs, at its best epoch"


@dataclass(frozen=True)
class FoldStarted:
    """Announces fold `fold` of `folds`; the fold's own training events follow, ending with its TrainingDone."""

    fold: int
    folds: int
    run_dir: Path
    val_pairs: int
    time_limit: float | None = None  # seconds this fold may take


@dataclass(frozen=True)
class CrossValidated:
    """All folds are trained: RUN/ensemble.json is written."""

    run_dir: Path
    cross_validation: dict  # see `cross_validate`


def fold_folder(run: Path, fold: int) -> Path:
    return Path(run) / f"fold-{fold}"


def fold_pairs(options: TrainOptions, fold: int) -> tuple[list, list]:
    """(training pairs, validation pairs) of fold `fold` (1..options.folds), as that fold's run splits them."""
    from .data import find_pairs, resolve_layout, split_pairs

    pairs = find_pairs(*resolve_layout(options.data, options.images, options.masks))
    return split_pairs(pairs, options.val_split, options.seed, fold=fold, folds=options.folds)


def check_folds(options: TrainOptions) -> None:
    """Before anything trains: K >= 2, no more folds than pairs, a usable run folder, enough time to plan each fold."""
    from . import planner
    from .runfolder import check_run_folder

    if options.folds < 2 or options.fold:
        raise UsageError(f"--folds {options.folds}: cross-validation needs 2 or more folds")
    fold_pairs(options, 1)  # refuses more folds than pairs, or data that cannot be paired
    check_run_folder(options)
    per_fold = (options.time_limit or planner.DEFAULT_BUDGET * options.folds) / options.folds
    if planner.wanted(options) and per_fold < planner.MIN_BUDGET:
        raise UsageError(f"--time-limit {options.time_limit:.0f}s over {options.folds} folds leaves {per_fold:.0f}s per fold; "
                         f"planning needs at least {planner.MIN_BUDGET:.0f}s each: give at least "
                         f"{planner.MIN_BUDGET * options.folds:.0f}s, fewer folds, or --no-plan")


def train_folds(options: TrainOptions, *, started: float | None = None) -> Iterator:
    """Train every fold; yields FoldStarted, then that fold's training events (training.train), per fold, and
    finally CrossValidated. `started` (time.monotonic()) is when the --time-limit began, if before this call."""
    from .runfolder import write_run_yaml
    from .training import Planned, TrainingDone, train

    started = time.monotonic() if started is None else started
    options.validate()
    check_folds(options)
    run = Path(options.out)
    run.mkdir(parents=True, exist_ok=True)
    (run / ENSEMBLE_FILE).unlink(missing_ok=True)  # --overwrite: no stale ensemble while the folds retrain
    write_run_yaml(run, options)
    plan, results = None, []
    for fold in range(1, options.folds + 1):
        one = _fold_options(options, fold, plan, started)
        yield FoldStarted(fold, options.folds, Path(one.out), len(fold_pairs(options, fold)[1]), one.time_limit)
        for event in train(one):
            if isinstance(event, Planned):
                plan = event.plan
            elif isinstance(event, TrainingDone):
                results.append(event)
            yield event
    cross_validation = cross_validate(results, options)
    from .ensemble import write_description

    write_description(run, [f"{fold_folder(Path('.'), k).as_posix()}/model-best" for k in range(1, options.folds + 1)],
                      cross_validation)
    yield CrossValidated(run, cross_validation)


def _fold_options(options: TrainOptions, fold: int, plan, started: float) -> TrainOptions:
    """Fold `fold`'s options: its folder, its split, its share of the time left, and the first fold's plan."""
    time_limit = options.time_limit
    if time_limit:  # the first fold's share is exact: the planner's minimum budget was checked against it
        left = time_limit - (time.monotonic() - started) if fold > 1 else time_limit
        time_limit = max(left / (options.folds - fold + 1), 1.0)
    one = dataclasses.replace(options, out=fold_folder(options.out, fold), fold=fold, time_limit=time_limit)
    if plan is not None:  # the folds after the first train as it was planned
        one = dataclasses.replace(plan.apply(one), plan=False)
    return one


def cross_validate(results: list, options: TrainOptions) -> dict:
    """Each fold's best epoch and scores, and the mean and sd (n - 1) over folds of every score."""
    per_fold = [{"fold": k, "folder": f"fold-{k}", "best_epoch": done.best_epoch, "score": round(done.best_score, 6),
                 "reason": done.reason, "metrics": done.metrics} for k, done in enumerate(results, 1)]
    table = {"score": [done.best_score for done in results]}
    for done in results:
        for key, value in done.metrics.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                table.setdefault(key, []).append(float(value))
    full = {k: np.array(v) for k, v in table.items() if len(v) == len(results)}
    return {"folds": len(results), "seed": options.seed, "score": SCORE, "per_fold": per_fold,
            "mean": {k: round(float(v.mean()), 6) for k, v in full.items()},
            "sd": {k: round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 6) for k, v in full.items()}}
