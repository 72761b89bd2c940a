"""The Typer app and what every command shares: consoles, one-line errors and warnings, exit codes.

The CLI package is the only place that prints, draws progress or exits. Library modules (and torch, smp) are
imported inside the commands so that `unetcli --help` answers at once.
"""

from __future__ import annotations

import math
import os
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import __version__
from ..errors import EXIT_INTERNAL, EXIT_INTERRUPTED, CompileFailedWarning, UnetcliError, UnetcliWarning
from ..options import CLASS_MAP_HELP

app = typer.Typer(
    name="unetcli",
    help="Semantic image segmentation with a U-Net: train, predict, evaluate. Offline by default.",
    epilog="Example: unetcli demo    (make data, train, predict and evaluate in about a minute)",
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
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    _state["debug"] = debug


def configure_process() -> None:
    """What the command-line program sets for its own process (a library import changes none of it): no model
    hub access unless weights are asked for (see allow_downloads), OpenCV quiet and single-threaded (its pool
    competes with torch's threads on small machines)."""
    import cv2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cv2.setNumThreads(1)
    if hasattr(cv2, "utils") and hasattr(cv2.utils, "logging"):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def allow_downloads(encoder_weights: str | None) -> None:
    """Named encoder weights (e.g. imagenet) come from a model hub: let it be reached for this process. Must run
    before torch/smp are imported (the hub library reads the setting once)."""
    if encoder_weights not in (None, "none", "None"):
        os.environ["HF_HUB_OFFLINE"] = "0"


def say(kind: str, message: str) -> None:
    """One line on stderr: 'error: ...', 'warning: ...' or 'problem: ...'. Messages may hold [brackets]."""
    style = {"error": "bold red", "problem": "bold red", "warning": "yellow"}[kind]
    err_console.print(f"[{style}]{kind}:[/] {escape(message)}", soft_wrap=True)


def _fail(message: str, code: int) -> None:
    say("error", message)
    raise typer.Exit(code)


def _render_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning) -> None:
    """Library warnings of ours become one `warning:` line; others keep Python's format."""
    if isinstance(message, CompileFailedWarning):
        say("warning", f"--compile failed ({message.reason}); {message.doing} without it")
    elif isinstance(message, UnetcliWarning):
        say("warning", str(message))
    else:
        _default(message, category, filename, lineno, file, line)


def run_guarded(action: Callable[[], int | None]) -> None:
    """Run a command body: our errors become one line and their exit code, Ctrl-C exits 130, our warnings
    one line each."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", UnetcliWarning)
            warnings.showwarning = _render_warning
            configure_process()
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


def duration(seconds: float) -> str:
    """12s, 4m05s, 2h10m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def main_rank() -> bool:
    """Under torchrun only rank 0 reports."""
    from ..runtime import TorchrunEnv

    return TorchrunEnv.read().main


def interactive(quiet: bool) -> bool:
    return not quiet and err_console.is_terminal


# Options several commands share.
DataArg = Annotated[Path | None, typer.Argument(help="Folder holding images/ and masks/ (pairs match by file name).")]
ImagesOpt = Annotated[Path | None, typer.Option("--images", help="Images folder (instead of DATA/images).")]
MasksOpt = Annotated[Path | None, typer.Option("--masks", help="Masks folder (instead of DATA/masks).")]
MaskModeOpt = Annotated[str, typer.Option("--mask-mode", help="auto | binary | index | palette | rgb | instances (object ids).")]
IgnoreOpt = Annotated[int | None, typer.Option("--ignore-index", help="Mask value to leave out of loss and metrics.")]
ClassMapOpt = Annotated[Path | None, typer.Option("--class-map", help=CLASS_MAP_HELP)]
ClassesOpt = Annotated[str, typer.Option("--classes", help="Number of classes, or auto (from the masks).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (bf16 on CPUs/GPUs that have it) | fp32 | bf16 | fp16.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


INSTANCE_VALUES = {"background": "0", "object": "each object's id", "border": "(where objects touch)"}


def class_table(class_map, class_pixels=None, ignored_pixels: int = 0) -> Table:
    """The value -> class table; with pixel counts, each row's share of all mask pixels (ignored ones included)."""
    from ..masks import format_value

    table = Table(title=f"mask values -> classes ({class_map.mode})")
    for column in ("id", "class", "mask value"):
        table.add_column(column)
    if class_pixels:
        table.add_column("pixels", justify="right")
    total = sum(class_pixels or []) + ignored_pixels or 1

    def share(count: int) -> list[str]:
        return [f"{100 * count / total:.1f} %"] if class_pixels else []

    for i, c in enumerate(class_map.classes):
        value = format_value(c.value) if class_map.mode != "instances" else INSTANCE_VALUES.get(c.name, "")
        table.add_row(str(i), c.name, value, *share(class_pixels[i] if class_pixels else 0))
    if class_map.ignore_value is not None:
        table.add_row("-", "(ignored)", str(class_map.ignore_value), *share(ignored_pixels))
    return table


def plan_table(plan) -> Table:
    """The planner's choices, each with its reason."""
    table = Table(title=f"plan: {duration(plan.budget)} budget on {plan.device} ({plan.precision}); "
                        f"expected {duration(plan.expected_seconds)}")
    for column in ("option", "value", "why"):
        table.add_column(column)
    for name, value in plan.choices.items():
        table.add_row(f"--{name.replace('_', '-')}", str(value), plan.reasons[name])
    table.add_row("predict --tile", str(plan.tile), "four crops, at least 1024: larger images are predicted in "
                  "overlapping tiles (stored with the model; predict --tile overrides)")
    return table


def scores_table(summary: dict) -> Table:
    table = Table(title=f"{summary['images']} images, pixel error {fmt(summary['pixel_error'])}")
    for column in ("class", "dice", "iou", "precision", "recall", "dice (image mean)"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, entry in summary["classes"].items():
        table.add_row(name, *(fmt(entry[k]) for k in ("dice", "iou", "precision", "recall", "dice_image_mean")))
    table.add_row("[bold]mean[/]", fmt(summary["mean_dice"]), fmt(summary["mean_iou"]), "", "", "")
    return table
