"""The Typer app: the only module that prints, draws progress or exits. Library modules (and torch, smp)
are imported inside the commands so that `unetcli --help` answers at once."""

from __future__ import annotations

import json
import math
import os
import re
import traceback
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import EXIT_DATA, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_PARTIAL, UnetcliError, UsageError

app = typer.Typer(
    name="unetcli",
    help="Semantic image segmentation with a U-Net: train, predict, evaluate. Offline by default.",
    epilog="Example: unetcli demo    (make data, train, predict and evaluate in about two minutes)",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        print(f"unetcli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks (for bug reports).")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    _state["debug"] = debug


def _say(kind: str, message: str) -> None:
    """One line on stderr: 'error: ...', 'warning: ...' or 'problem: ...'. Messages may hold [brackets]."""
    style = {"error": "bold red", "problem": "bold red", "warning": "yellow"}[kind]
    err_console.print(f"[{style}]{kind}:[/] {escape(message)}", soft_wrap=True)


def _fail(message: str, code: int) -> None:
    _say("error", message)
    raise typer.Exit(code)


def run_guarded(action: Callable[[], Optional[int]]) -> None:
    """Run a command body: our errors become one line and their exit code, Ctrl-C exits 130."""
    try:
        code = action()
    except UnetcliError as err:
        if _state["debug"]:
            traceback.print_exc()
        _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except typer.Exit:
        raise
    except Exception as err:  # a bug of ours: say so plainly, keep the traceback for --debug
        if _state["debug"]:
            raise
        _fail(f"internal error: {type(err).__name__}: {err} (rerun with --debug and report the traceback)",
              EXIT_INTERNAL)
    else:
        if code:
            raise typer.Exit(code)


def parse_duration(text: Optional[str]) -> Optional[float]:
    """'90', '90s', '30m', '2h', '1h30m' -> seconds."""
    if text is None:
        return None
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not parts or not any(parts.groups()):
        raise UsageError(f"--time-limit {text!r}: use e.g. 600, 90s, 30m, 2h or 1h30m")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def parse_classes(text: str) -> Optional[int]:
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--classes {text!r}: use auto or a positive number")
    return int(text)


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _main_rank() -> bool:
    """Under torchrun only rank 0 reports."""
    return os.environ.get("RANK", "0") == "0"


def _interactive(quiet: bool) -> bool:
    return not quiet and err_console.is_terminal


# ------------------------------------------------------------------------------------------------ train

DataArg = Annotated[Optional[Path], typer.Argument(help="Folder holding images/ and masks/ (pairs match by file name).")]
ImagesOpt = Annotated[Optional[Path], typer.Option("--images", help="Images folder (instead of DATA/images).")]
MasksOpt = Annotated[Optional[Path], typer.Option("--masks", help="Masks folder (instead of DATA/masks).")]
MaskModeOpt = Annotated[str, typer.Option("--mask-mode", help="auto | binary | index | palette | rgb.")]
IgnoreOpt = Annotated[Optional[int], typer.Option("--ignore-index", help="Mask value to leave out of loss and metrics.")]
ClassMapOpt = Annotated[Optional[Path], typer.Option("--class-map", help='JSON/YAML {name: value} map, value a gray level or \\[r,g,b].')]
ClassesOpt = Annotated[str, typer.Option("--classes", help="Number of classes, or auto (from the masks).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (bf16 on CPUs/GPUs that have it) | fp32 | bf16 | fp16.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


def class_table(class_map, class_pixels=None) -> Table:
    from .masks import format_value

    table = Table(title=f"mask values -> classes ({class_map.mode})")
    for column in ("id", "class", "mask value"):
        table.add_column(column)
    if class_pixels:
        table.add_column("pixels", justify="right")
    total = sum(class_pixels or []) or 1
    for i, c in enumerate(class_map.classes):
        row = [str(i), c.name, format_value(c.value)]
        if class_pixels:
            row.append(f"{100 * class_pixels[i] / total:.1f} %")
        table.add_row(*row)
    if class_map.ignore_value is not None:
        table.add_row("-", "(ignored)", str(class_map.ignore_value), *([""] if class_pixels else []))
    return table


def render_training(events, quiet: bool = False, as_json: bool = False):
    """Draw training events (Rich progress on a terminal, plain lines otherwise); return TrainingDone."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .train import BatchDone, DataReady, EpochDone, TrainingDone

    progress = None
    task = None
    done = None
    if not _main_rank():
        quiet, as_json = True, False
    try:
        for event in events:
            if isinstance(event, DataReady):
                if not quiet and not as_json:
                    err_console.print(
                        f"{event.train_pairs} training / {event.val_pairs} validation pairs, {event.in_channels} channel(s), "
                        f"device {event.device}, precision {event.precision}")
                    err_console.print(class_table(event.class_map, event.class_pixels))
                if _interactive(quiet) and not as_json:
                    progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                        TextColumn("{task.completed}/{task.total}"), TextColumn("loss {task.fields[loss]}"),
                                        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True)
                    progress.start()
                    task = progress.add_task("train", total=event.steps_per_epoch, epoch=1, loss="-")
            elif isinstance(event, BatchDone) and progress is not None:
                progress.update(task, completed=event.step, epoch=event.epoch, loss=f"{event.loss:.4f}")
            elif isinstance(event, EpochDone):
                if as_json:
                    print(json.dumps({"event": "epoch", "epoch": event.epoch, "train_loss": event.train_loss,
                                      "val_loss": event.val_loss, "dice": event.dice, "iou": event.iou,
                                      "best": event.is_best, "seconds": round(event.seconds, 2)}), flush=True)
                elif not quiet:
                    dice = " ".join(_fmt(d) for d in event.dice) or "-"
                    line = (f"epoch {event.epoch}/{event.epochs}  loss {event.train_loss:.4f}  val loss "
                            f"{_fmt(event.val_loss)}  dice {dice}  {event.seconds:.1f}s" + ("  [best]" if event.is_best else ""))
                    (progress.console if progress else err_console).print(line)
                if progress is not None:
                    progress.reset(task, completed=0, epoch=event.epoch + 1)
            elif isinstance(event, TrainingDone):
                done = event
    finally:
        if progress is not None:
            progress.stop()
    return done


@app.command(epilog="Example: unetcli train data/ -o runs/cells --epochs 50   |   unetcli train --resume runs/cells --epochs 80")
def train(
    ctx: typer.Context,
    data: DataArg = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder to create (model-best/, model-last/, history.csv).")] = Path("runs/unet"),
    images: ImagesOpt = None,
    masks: MasksOpt = None,
    val: Annotated[Optional[Path], typer.Option("--val", help="Separate validation DATA folder.")] = None,
    val_split: Annotated[float, typer.Option("--val-split", help="Share of pairs held out for validation (seeded).")] = 0.2,
    encoder: Annotated[str, typer.Option("--encoder", help="Any smp encoder, e.g. resnet18, resnet34, efficientnet-b0.")] = "resnet34",
    encoder_weights: Annotated[str, typer.Option("--encoder-weights", help="none (offline, random init) or e.g. imagenet (downloads).")] = "none",
    classes: ClassesOpt = "auto",
    mask_mode: MaskModeOpt = "auto",
    ignore_index: IgnoreOpt = None,
    class_map: ClassMapOpt = None,
    epochs: Annotated[int, typer.Option("--epochs")] = 40,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    crop: Annotated[int, typer.Option("--crop", help="Training crop side (multiple of 32).")] = 256,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, warm-up + cosine).")] = 1e-3,
    loss: Annotated[str, typer.Option("--loss", help="dice, ce, focal joined by +.")] = "dice+ce",
    class_weights: Annotated[str, typer.Option("--class-weights", help="none | auto (inverse sqrt frequency) | w0,w1,... one per class.")] = "none",
    border_weight: Annotated[bool, typer.Option("--border-weight", help="Weight the loss towards thin gaps between touching objects (U-Net paper).")] = False,
    border_w0: Annotated[float, typer.Option("--border-w0", help="Border weight strength w0.")] = 10.0,
    border_sigma: Annotated[float, typer.Option("--border-sigma", help="Border weight width sigma, pixels.")] = 5.0,
    consistency: Annotated[float, typer.Option("--consistency", help="Weight of a flip/rotation invariance term (0 = off).")] = 0.0,
    foreground_crops: Annotated[float, typer.Option("--foreground-crops", help="Share of crops centred on foreground.")] = 0.3,
    augment: Annotated[str, typer.Option("--augment", help="none | light | default | heavy | elastic | FILE (Albumentations JSON/YAML).")] = "default",
    samples_per_epoch: Annotated[int, typer.Option("--samples-per-epoch", help="Random crops per epoch.")] = 256,
    patience: Annotated[Optional[int], typer.Option("--patience", help="Stop after N epochs without improvement.")] = None,
    min_delta: Annotated[float, typer.Option("--min-delta", help="Improvement that resets --patience.")] = 0.0,
    time_limit: Annotated[Optional[str], typer.Option("--time-limit", help="Stop cleanly before this much time, e.g. 30m, 2h.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    workers: Annotated[Optional[int], typer.Option("--workers", help="DataLoader workers (default 0 on CPU, 4 on GPU).")] = None,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model (pays on long GPU runs; eager if it fails).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Reuse a non-empty run folder.")] = False,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue RUN from its model-last/ (--epochs may be raised).")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a U-Net on a folder of images and masks."""

    def action():
        from .options import TrainOptions, resume_options
        from .train import train as run_training

        given = dict(
            out=out, data=data, images=images, masks=masks, val=val, val_split=val_split, encoder=encoder,
            encoder_weights=encoder_weights, classes=parse_classes(classes), mask_mode=mask_mode,
            ignore_index=ignore_index, class_map_file=class_map, epochs=epochs, batch_size=batch_size, crop=crop,
            lr=lr, loss=loss, class_weights=class_weights, border_weight=border_weight, border_w0=border_w0,
            border_sigma=border_sigma, consistency=consistency, foreground_crops=foreground_crops, augment=augment,
            samples_per_epoch=samples_per_epoch, patience=patience,
            min_delta=min_delta, time_limit=parse_duration(time_limit), seed=seed, device=device,
            precision=precision, workers=workers, compile=compile_model, overwrite=overwrite,
        )
        if resume is not None:
            param = {"class_map_file": "class_map", "compile": "compile_model"}
            typed = {k: v for k, v in given.items()
                     if getattr(ctx.get_parameter_source(param.get(k, k)), "name", "") == "COMMANDLINE" and k != "out"}
            options = resume_options(resume, typed)
        else:
            options = TrainOptions(**given)
        done = render_training(run_training(options), quiet, as_json)
        if not _main_rank():
            return
        if as_json:
            print(json.dumps({"event": "done", "run": str(done.run_dir), "best_epoch": done.best_epoch,
                              "reason": done.reason, "metrics": done.metrics}))
        elif not quiet:
            err_console.print(f"done ({done.reason}); best epoch {done.best_epoch}: {done.run_dir / 'model-best'}")

    run_guarded(action)


# ---------------------------------------------------------------------------------------------- predict


def render_predictions(results, as_json: bool, quiet: bool, total: int) -> int:
    """Print results as they come; return the exit code: 5 when some inputs failed and others succeeded,
    the failures' own code (3 for bad files) when every input failed."""
    from rich.progress import Progress

    failed = ok = skipped = 0
    failure_codes = []
    progress = Progress(console=err_console, transient=True) if _interactive(quiet) else None
    task = progress.add_task("predicting", total=total) if progress else None
    if progress:
        progress.start()
    try:
        for result in results:
            if result.status == "error":
                failed += 1
                failure_codes.append(result.exit_code or EXIT_DATA)
                _say("error", result.error)
            elif result.status == "skipped":
                skipped += 1
            else:
                ok += 1
                if result.warning and not quiet:
                    _say("warning", result.warning)
            if as_json:
                print(result.to_json(), flush=True)
            if progress:
                progress.advance(task)
    finally:
        if progress:
            progress.stop()
    if not quiet:
        world = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun each rank reports its own share
        share = f"rank {os.environ.get('RANK', '0')} of {world}: " if world > 1 else ""
        err_console.print(f"{share}{ok} predicted, {skipped} skipped, {failed} failed")
    if not failed:
        return 0
    return EXIT_PARTIAL if ok or skipped else max(failure_codes)


@app.command(epilog="Example: unetcli predict runs/cells/model-best images/ -o predictions/ --save mask,overlay")
def predict(
    model: Annotated[Path, typer.Argument(help="Model folder (or a run folder: its model-best/ is used).")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders, globs, @list.txt, or - for paths on stdin.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (created if missing).")],
    save: Annotated[str, typer.Option("--save", help="Comma list of mask, color, overlay, probs (16-bit PNGs: value / 65535 = probability).")] = "mask",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Same-size images (or tiles) per forward pass, at most; 0: auto "
                                            "(about a quarter megapixel per pass on CPU, the fastest there; up to 8 images on GPUs).")] = 0,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Foreground probability threshold (binary models).")] = None,
    tile: Annotated[str, typer.Option("--tile", help="auto (the model's tile size) | off | N: images larger than N are predicted in overlapping tiles.")] = "auto",
    overlap: Annotated[Optional[float], typer.Option("--overlap", help="Tile overlap share (default 0.25).")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average over flips (4x slower).")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model: faster on many images of one size, "
                                                "after a compile of a minute or more (needs a C++ compiler on CPU); falls back to eager if it fails.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose outputs already exist.")] = False,
    shard: Annotated[Optional[str], typer.Option("--shard", help="K/N: process only the K-th of N interleaved shares.")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Segment images with a trained model; writes masks in the training masks' own values."""

    def action():
        from .checkpoint import resolve_model_dir
        from .predict import PredictOptions, Predictor, parse_shard, predict_files, resolve_inputs

        if batch_size < 0:
            raise UsageError(f"--batch-size {batch_size}: use 0 (auto) or a positive number of images")
        paths = resolve_inputs(inputs)
        share = parse_shard(shard)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if shard is None and world > 1:  # under torchrun each rank takes its share
            share = (int(os.environ.get("RANK", "0")) + 1, world)
        options = PredictOptions(out_dir=out, save=tuple(s.strip() for s in save.split(",") if s.strip()),
                                 skip_existing=skip_existing, shard=share)
        predictor = Predictor.from_folder(resolve_model_dir(model), device, precision, tile, overlap, tta, threshold,
                                          batch_size, compile_model)
        return render_predictions(predict_files(predictor, paths, options), as_json, quiet, len(paths))

    run_guarded(action)


# --------------------------------------------------------------------------------------------- evaluate


def scores_table(summary: dict) -> Table:
    table = Table(title=f"{summary['images']} images, pixel error {_fmt(summary['pixel_error'])}")
    for column in ("class", "dice", "iou", "precision", "recall", "dice (image mean)"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, entry in summary["classes"].items():
        table.add_row(name, *(_fmt(entry[k]) for k in ("dice", "iou", "precision", "recall", "dice_image_mean")))
    table.add_row("[bold]mean[/]", _fmt(summary["mean_dice"]), _fmt(summary["mean_iou"]), "", "", "")
    return table


def render_evaluation(events, quiet: bool):
    from .evaluate import Evaluation

    evaluation = None
    for event in events:
        if isinstance(event, Evaluation):
            evaluation = event
    return evaluation


@app.command(epilog="Examples: unetcli evaluate runs/cells/model-best test/   |   unetcli evaluate --pred out/ --gt test/masks/")
def evaluate(
    model: Annotated[Optional[Path], typer.Argument(help="Model folder to score (omit with --pred/--gt).")] = None,
    data: DataArg = None,
    images: ImagesOpt = None,
    masks: MasksOpt = None,
    pred: Annotated[Optional[Path], typer.Option("--pred", help="Folder of predicted masks (scored without a model).")] = None,
    gt: Annotated[Optional[Path], typer.Option("--gt", help="Folder of true masks, for --pred.")] = None,
    mask_mode: MaskModeOpt = "auto",
    class_map: ClassMapOpt = None,
    tile: Annotated[str, typer.Option("--tile", help="As for predict: auto | off | N.")] = "auto",
    tta: Annotated[bool, typer.Option("--tta", help="Average over flips, as predict --tta.")] = False,
    per_image: Annotated[Optional[Path], typer.Option("--per-image", help="Write per-image scores and counts (CSV).")] = None,
    summary_file: Annotated[Optional[Path], typer.Option("--summary", help="Write the summary (JSON).")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write a PNG: Dice per class, confusion matrix, worst images.")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score a model, or a folder of predictions, against ground-truth masks."""

    def action():
        from .checkpoint import resolve_model_dir
        from .evaluate import evaluate_folders, evaluate_model

        if pred is not None or gt is not None:
            if pred is None or gt is None or model is not None:
                raise UsageError("use either MODEL DATA, or --pred DIR --gt DIR (both, without a model)")
            events = evaluate_folders(pred, gt, mask_mode, class_map)
        else:
            if model is None:
                raise UsageError("give a MODEL folder and DATA (or --pred DIR --gt DIR)")
            events = evaluate_model(resolve_model_dir(model), data, images, masks, device, precision, tile, tta)
        evaluation = render_evaluation(events, quiet)
        evaluation.write(per_image, summary_file, report)
        summary = evaluation.summary()
        if as_json:
            print(json.dumps(summary))
        else:
            out_console.print(scores_table(summary))

    run_guarded(action)


# ------------------------------------------------------------------------------------------------ check


@app.command(epilog="Example: unetcli check data/ --mask-mode auto")
def check(
    data: DataArg = None,
    images: ImagesOpt = None,
    masks: MasksOpt = None,
    mask_mode: MaskModeOpt = "auto",
    ignore_index: IgnoreOpt = None,
    class_map: ClassMapOpt = None,
    classes: ClassesOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Pre-flight a dataset: pairs, sizes, channels, mask values -> classes, and every problem found."""

    def action():
        from .data import find_pairs, resolve_layout, scan_dataset

        pairs = find_pairs(*resolve_layout(data, images, masks))
        scan = scan_dataset(pairs, mask_mode, ignore_index, class_map, parse_classes(classes))
        sizes = scan.sizes
        report = {
            "pairs": len(pairs),
            "readable": len(scan.samples),
            "channels": scan.in_channels,
            "dtypes": sorted({str(s.image.dtype) for s in scan.samples}),
            "min_size": [min(h for h, _ in sizes), min(w for _, w in sizes)] if sizes else None,
            "max_size": [max(h for h, _ in sizes), max(w for _, w in sizes)] if sizes else None,
            "classes": scan.class_map.to_dict() if scan.class_map else None,
            "class_pixels": scan.class_pixels,
            "problems": scan.problems,
        }
        if as_json:
            print(json.dumps(report))
        else:
            out_console.print(f"{report['pairs']} pairs, {report['readable']} readable; channels {report['channels']}; "
                              f"pixel types {', '.join(report['dtypes'])}; sizes (h x w) {report['min_size']} .. {report['max_size']}")
            if scan.class_map:
                out_console.print(class_table(scan.class_map, scan.class_pixels))
            for problem in scan.problems:
                _say("problem", problem)
            if not scan.problems:
                out_console.print("no problems found")
        return 3 if scan.problems else 0

    run_guarded(action)


# ------------------------------------------------------------------------------------------------- info


@app.command(epilog="Example: unetcli info runs/cells/model-best")
def info(
    model: Annotated[Path, typer.Argument(help="Model folder (or a run folder).")],
    as_json: JsonOpt = False,
) -> None:
    """Show what a model folder holds: classes, channels, pipeline, metrics, versions."""

    def action():
        from .checkpoint import read_config, read_meta, resolve_model_dir
        from .masks import ClassMap

        folder = resolve_model_dir(model)
        meta = read_meta(folder)
        architecture, config = read_config(folder)  # what predict would build: refuse it here too
        if as_json:
            print(json.dumps(meta))
            return
        training = meta.get("training", {})
        out_console.print(f"[bold]{folder}[/]  format {meta['format_version']}, epoch {meta.get('epoch')}")
        out_console.print(f"{architecture.__name__}, encoder {config.get('encoder_name')}, {meta['in_channels']} input channel(s), "
                          f"trained on {meta.get('data', {}).get('train_pairs')} pairs, crop {training.get('crop')}, "
                          f"augment {training.get('augment')}")
        out_console.print(class_table(ClassMap.from_dict(meta["classes"])))
        config = meta["pipeline"]["config"]
        out_console.print(f"normalisation: mean {config['mean']}, std {config['std']} (after scaling to [0, 1])")
        steps = [t["__class_fullname__"] for t in meta["pipeline"]["eval"]["transform"]["transforms"]]
        out_console.print(f"eval pipeline: {' -> '.join(steps)}")
        metrics = meta.get("metrics", {})
        if metrics:
            out_console.print("metrics at save: " + ", ".join(f"{k} {v}" for k, v in metrics.items() if v != ""))
        out_console.print("versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()))

    run_guarded(action)


# ----------------------------------------------------------------------------------------------- export


@app.command(epilog="Examples: unetcli export runs/cells/model-best --format onnx -o deploy/cells.onnx\n\n"
                     "unetcli export runs/cells/model-best --format folder --half -o share/cells")
def export(
    model: Annotated[Path, typer.Argument(help="Model folder (or a run folder: its model-best/ is used).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="File to write (FILE.json with preprocessing and classes goes next "
                                                          "to it), or a new folder for --format folder.")],
    fmt: Annotated[str, typer.Option("--format", help="onnx | torchscript | folder | auto (from the name: .onnx, .pt, no suffix = folder).")] = "auto",
    half: Annotated[bool, typer.Option("--half", help="folder only: store fp16 weights (half the size; loaded as fp32).")] = False,
    tolerance: Annotated[Optional[float], typer.Option("--tolerance", help="Largest accepted |logit difference| from PyTorch in the "
                                                       "check \\[default: 1e-3; with --half 0.01 of the largest |logit|].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a model to ONNX or TorchScript (fp32), or a clean model folder to share, checked numerically against PyTorch."""

    def action():
        import contextlib

        from .checkpoint import resolve_model_dir
        from .export import export_model

        busy = err_console.status(f"exporting to {escape(str(out))} ...") if _interactive(as_json) else contextlib.nullcontext()
        with busy:
            result = export_model(resolve_model_dir(model), out, fmt, tolerance, half)
        if as_json:
            print(json.dumps(result.to_dict()))
            return
        opset = f", opset {result.opset}" if result.opset else ""
        described = "description" if result.format == "folder" else "sidecar"
        out_console.print(f"{result.format}{opset}: {result.file}\n{described}: {result.sidecar}\n"
                          f"max abs difference from PyTorch: {result.max_abs_diff:.2e} (limit {result.tolerance:g}, "
                          f"input {'x'.join(map(str, result.check_input))})", markup=False)

    run_guarded(action)


# ------------------------------------------------------------------------------------------------- demo


@app.command(epilog="Example: unetcli demo /tmp/unetcli-demo")
def demo(
    folder: Annotated[Path, typer.Argument(help="Where to put the demo data, run and predictions.")] = Path("unetcli-demo"),
    seed: Annotated[int, typer.Option("--seed")] = 0,
    quiet: QuietOpt = False,
) -> None:
    """Built-in default: make a synthetic dataset, train a U-Net, predict held-out images, evaluate."""

    def action():
        import time

        from .data import find_pairs, resolve_layout, split_pairs
        from .demo import demo_train_options, make_dataset
        from .evaluate import evaluate_model
        from .predict import PredictOptions, Predictor, predict_files
        from .train import train as run_training

        start = time.monotonic()
        make_dataset(folder / "data", seed=seed)
        options = demo_train_options(folder, seed)
        err_console.print(f"synthetic dataset: {folder / 'data'} (striped shapes on a blotchy ground; same mean brightness)")
        done = render_training(run_training(options), quiet)
        model_dir = done.run_dir / "model-best"
        # predict the held-out pairs, exactly those training validated on
        _, held_out = split_pairs(find_pairs(*resolve_layout(options.data)), options.val_split, options.seed)
        held = folder / "held-out"
        for sub in ("images", "masks"):
            (held / sub).mkdir(parents=True, exist_ok=True)
        for pair in held_out:
            for source, sub in ((pair.image, "images"), (pair.mask, "masks")):
                target = held / sub / source.name
                target.unlink(missing_ok=True)
                target.symlink_to(source.resolve())
        predictor = Predictor.from_folder(model_dir)
        predictions = folder / "predictions"
        results = predict_files(predictor, [p.image for p in held_out],
                                PredictOptions(out_dir=predictions, save=("mask", "overlay")))
        render_predictions(results, False, quiet, len(held_out))
        evaluation = render_evaluation(evaluate_model(model_dir, held), quiet)
        summary = evaluation.summary()
        out_console.print(scores_table(summary))
        out_console.print(f"model:       {model_dir}\npredictions: {predictions}\n"
                          f"finished in {time.monotonic() - start:.0f} s; foreground Dice "
                          f"{_fmt(summary['classes']['foreground']['dice'])} on {len(held_out)} held-out images")

    run_guarded(action)


def main() -> None:
    app()
