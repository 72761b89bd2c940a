"""`unetcli train`: its flags are declared from `TrainOptions`' fields (flag, help, default live there once).

Every flag defaults to None here, meaning "not typed": a new run takes the rest from `--config FILE` or the
defaults, and `--resume` knows exactly which flags would change the run.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from ..options import TrainOptions, convert, field_type, train_option_fields
from .app import JsonOpt, QuietOpt, allow_downloads, app, class_table, err_console, fmt, interactive, main_rank, plan_table, run_guarded

CLI_TYPES = {"classes": str, "time_limit": str}  # typed as text on the command line ("auto", "30m")
EXTRA_PARAMETERS = {
    "config": Annotated[Path | None, typer.Option("--config", help="YAML file of options (a run's run.yaml retrains it); "
                                                     "flags override it.")],
    "resume": Annotated[Path | None, typer.Option("--resume", help="Continue RUN from its model-last/ (--epochs may be raised).")],
    "as_json": JsonOpt,
    "quiet": QuietOpt,
}


def _shown_default(f: dataclasses.Field) -> str | bool:
    if f.name == "classes":
        return "auto"
    return False if f.default is None or f.metadata.get("argument") else str(f.default)


def _parameter(f: dataclasses.Field) -> inspect.Parameter:
    """A TrainOptions field as a Typer parameter with default None ("not typed")."""
    kind = CLI_TYPES.get(f.name) or field_type(f)
    help_text = f.metadata["help"]
    if f.metadata.get("argument"):
        declaration = typer.Argument(help=help_text, show_default=False)
    else:
        flag = f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"
        flags = [flag] if "/--no-" in flag else flag.split("/")  # --x/--no-x is one declaration of a switch
        declaration = typer.Option(*flags, help=help_text, show_default=_shown_default(f))
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, declaration])


def declared_from_options(command):
    """Give `command(**values)` the signature Typer reads: one parameter per TrainOptions field, then the extras."""
    parameters = [_parameter(f) for f in train_option_fields()]
    parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None if name in ("config", "resume") else False,
                                     annotation=annotation) for name, annotation in EXTRA_PARAMETERS.items()]
    command.__signature__ = inspect.Signature(parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


def options_from_command_line(values: dict) -> TrainOptions:
    """The typed flags (converted to their fields' types) over --config or the defaults; or, with --resume, over
    the run's own options. Validated before any data is read."""
    from ..options import load_config, resume_options

    config, resume = values.pop("config"), values.pop("resume")
    given = {name: convert(name, value) for name, value in values.items() if value is not None}
    if resume is not None:
        if config is not None:
            raise UsageError("--config and --resume do not go together: a resumed run keeps its own options")
        given.pop("out", None)
        allow_downloads(given.get("encoder_weights"))
        return resume_options(resume, given)
    values = load_config(config) if config is not None else {}
    options = TrainOptions.from_values(values, str(config))
    options = dataclasses.replace(options, **given, set_by_user=options.set_by_user | set(given))
    allow_downloads(options.encoder_weights)  # before validate() imports smp
    return options.validate()


@app.command(epilog="Example: unetcli train data/ -o runs/cells --epochs 50   |   unetcli train --resume runs/cells --epochs 80"
                    "   |   unetcli train --config runs/cells/run.yaml -o runs/cells2")
@declared_from_options
def train(**values) -> None:
    """Train a U-Net on a folder of images and masks."""
    as_json, quiet = values.pop("as_json"), values.pop("quiet")

    def action():
        from ..training import train as run_training

        options = options_from_command_line(values)
        if options.folds > 1 and not options.fold:
            render_folds(options, quiet=quiet, as_json=as_json)
            return
        done = render_training(run_training(options), quiet=quiet, as_json=as_json)
        if not main_rank():
            return
        if as_json:
            print(json.dumps({"event": "done", "run": str(done.run_dir), "best_epoch": done.best_epoch,
                              "reason": done.reason, "metrics": done.metrics, "calibration": done.calibration}))
        elif not quiet:
            err_console.print(f"done ({done.reason}); best epoch {done.best_epoch}: {done.run_dir / 'model-best'}")
            err_console.print(calibration_line(done.calibration), markup=False)

    run_guarded(action)


def render_folds(options, *, quiet: bool, as_json: bool, events=None):
    """Train the folds of `train --folds K` (or render the `events` of folds.train_folds), each as one training
    run is shown, then the cross-validated scores. Returns folds.CrossValidated."""
    from ..folds import CrossValidated, FoldStarted, train_folds
    from ..training import TrainingDone

    def one_fold(stream):
        for event in stream:
            yield event
            if isinstance(event, TrainingDone):
                return

    stream = iter(events if events is not None else train_folds(options))
    for event in stream:
        if isinstance(event, FoldStarted):
            limit = f", {event.time_limit:.0f}s" if event.time_limit else ""
            if as_json:
                print(json.dumps({"event": "fold", "fold": event.fold, "folds": event.folds, "run": str(event.run_dir),
                                  "val_pairs": event.val_pairs, "time_limit": event.time_limit}), flush=True)
            elif not quiet:
                err_console.print(f"fold {event.fold}/{event.folds}: {event.run_dir} ({event.val_pairs} validation pairs{limit})",
                                  markup=False)
            render_training(one_fold(stream), quiet=quiet, as_json=as_json)
        elif isinstance(event, CrossValidated):
            _cross_validated(event, quiet, as_json)
            return event
    return None


def _cross_validated(event, quiet: bool, as_json: bool) -> None:
    cv = event.cross_validation
    if as_json:
        print(json.dumps({"event": "done", "run": str(event.run_dir), "cross_validation": cv}))
    elif not quiet:
        scores = ", ".join(f"{k} {cv['mean'][k]:.4f} ± {cv['sd'][k]:.4f}" for k in cv["mean"] if k == "score" or k.startswith("dice_"))
        err_console.print(f"cross-validated over {cv['folds']} folds (mean ± sd of each fold's best epoch): {scores}", markup=False)
        err_console.print(f"ensemble of the folds: {event.run_dir} (predict, evaluate and export take it as one model)",
                          markup=False)


def calibration_line(calibration: dict | None) -> str:
    """What train says about model-best's temperature at the end."""
    if not calibration:
        return ("calibration: none (no validation set): probabilities are the raw sigmoid/softmax, temperature 1.0; "
                "unetcli calibrate MODEL DATA -o NEW fits one on labelled images")
    return (f"calibration: temperature {calibration['temperature']:.3f} fitted on {calibration['pixels']} validation pixels; "
            f"ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}, "
            f"Brier {calibration['brier_before']:.4f} -> {calibration['brier_after']:.4f}")


def _data_ready(event, quiet: bool, as_json: bool):
    """Print what training found in the data; returns a started Rich progress bar on a terminal, else None."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if not quiet and not as_json:
        err_console.print(
            f"{event.train_pairs} training / {event.val_pairs} validation pairs, {event.in_channels} channel(s), "
            f"device {event.device}, precision {event.precision}")
        err_console.print(class_table(event.class_map, event.class_pixels, event.ignored_pixels))
        if event.cache is not None:
            err_console.print(f"data cache: {event.cache.describe()}", markup=False, soft_wrap=True)
    if not interactive(quiet) or as_json:
        return None
    progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=err_console, transient=True)
    progress.start()
    progress.add_task("train", total=event.steps_per_epoch, epoch=1, loss="-")
    return progress


def _planned(plan, quiet: bool, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"event": "plan", **plan.to_dict()}), flush=True)
    elif not quiet:
        err_console.print(plan_table(plan))


def _epoch_done(event, progress, quiet: bool, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"event": "epoch", "epoch": event.epoch, "train_loss": event.train_loss,
                          "val_loss": event.val_loss, "dice": event.dice, "iou": event.iou,
                          "best": event.is_best, "seconds": round(event.seconds, 2)}), flush=True)
    elif not quiet:
        dice = " ".join(fmt(d) for d in event.dice) or "-"
        line = (f"epoch {event.epoch}/{event.epochs}  loss {event.train_loss:.4f}  val loss "
                f"{fmt(event.val_loss)}  dice {dice}  {event.seconds:.1f}s" + ("  [best]" if event.is_best else ""))
        (progress.console if progress else err_console).print(line, markup=False)  # "[best]" is text, not a style
    if progress is not None:
        progress.reset(progress.task_ids[0], completed=0, epoch=event.epoch + 1)


def render_training(events, *, quiet: bool = False, as_json: bool = False):
    """Draw training events (Rich progress on a terminal, plain lines in a log); return TrainingDone."""
    from ..training import BatchDone, DataReady, EpochDone, Planned, TrainingDone
    from .progress import TrainingLog, plain_progress

    progress = done = None
    if not main_rank():
        quiet, as_json = True, False
    log = TrainingLog() if plain_progress(quiet) else None
    try:
        for event in events:
            if log is not None:
                log.show(event)
            if isinstance(event, Planned):
                _planned(event.plan, quiet, as_json)
            elif isinstance(event, DataReady):
                progress = _data_ready(event, quiet, as_json)
            elif isinstance(event, BatchDone) and progress is not None:
                progress.update(progress.task_ids[0], completed=event.step, epoch=event.epoch, loss=f"{event.loss:.4f}")
            elif isinstance(event, EpochDone):
                _epoch_done(event, progress, quiet, as_json)
            elif isinstance(event, TrainingDone):
                done = event
    finally:
        if progress is not None:
            progress.stop()
    return done
