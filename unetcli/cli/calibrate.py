"""`unetcli calibrate`: fit a model's temperature on labelled images and write a calibrated copy of the folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .app import DataArg, DeviceOpt, ImagesOpt, JsonOpt, MasksOpt, PrecisionOpt, QuietOpt, app, err_console, interactive, out_console, run_guarded


@app.command(epilog="Example: unetcli calibrate runs/cells/model-best held-out/ -o runs/cells/model-calibrated")
def calibrate(
    model: Annotated[Path, typer.Argument(help="Model folder (or a run folder: its model-best/ is used); never changed.")],
    data: DataArg = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="New model folder to write: a copy of MODEL with the fitted temperature.")] = ...,
    images: ImagesOpt = None,
    masks: MasksOpt = None,
    tile: Annotated[str, typer.Option("--tile", help="As for predict: auto | off | N.")] = "auto",
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit temperature scaling (one temperature; probabilities = sigmoid/softmax(logits / T)) on labelled images
    that the model was not trained on, and write a calibrated copy of the model folder. Masks at the default
    threshold (binary) or by argmax do not change; the probabilities (--save probs, objects' mean probability,
    thresholds other than 0.5) become calibrated."""

    def action():
        import contextlib

        from ..calibration import calibrate_model
        from ..checkpoint import resolve_model_dir

        busy = err_console.status(f"calibrating on {escape(str(data or images))} ...") if interactive(quiet or as_json) else contextlib.nullcontext()
        with busy:
            fitted = calibrate_model(resolve_model_dir(model), data, out, images=images, masks=masks, device=device,
                                     precision=precision, tile=tile)
        if as_json:
            print(json.dumps({"model": str(out), **fitted.to_dict()}))
            return
        out_console.print(
            f"temperature {fitted.temperature_before:.3f} -> {fitted.temperature:.3f} (fitted on {fitted.pixels} pixels of "
            f"{fitted.source})\nECE   {fitted.ece_before:.4f} -> {fitted.ece_after:.4f}\n"
            f"Brier {fitted.brier_before:.4f} -> {fitted.brier_after:.4f}\ncalibrated model: {out}", markup=False)

    run_guarded(action)
