"""`unetcli info` and `unetcli export`: what a model folder holds, and the model in deployable forms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .app import JsonOpt, app, class_table, err_console, interactive, out_console, run_guarded


@app.command(epilog="Example: unetcli info runs/cells/model-best")
def info(
    model: Annotated[Path, typer.Argument(help="Model folder (or a run folder).")],
    as_json: JsonOpt = False,
) -> None:
    """Show what a model folder holds: classes, channels, pipeline, metrics, versions."""

    def action():
        from ..checkpoint import read_config, read_meta, resolve_model_dir

        folder = resolve_model_dir(model)
        meta = read_meta(folder)
        architecture, config = read_config(folder)  # what predict would build: refuse it here too
        if as_json:
            print(json.dumps(meta.to_dict()))
            return
        training = meta.training
        out_console.print(f"[bold]{folder}[/]  format {meta.to_dict()['format_version']}, epoch {meta.epoch}")
        out_console.print(f"{architecture.__name__}, encoder {config.get('encoder_name')}, {meta.in_channels} input channel(s), "
                          f"trained on {meta.data.get('train_pairs')} pairs, crop {training.get('crop')}, "
                          f"augment {training.get('augment')}")
        out_console.print(class_table(meta.classes))
        config = meta.pipeline_config
        out_console.print(f"normalisation: mean {config['mean']}, std {config['std']} (after scaling to [0, 1])")
        steps = [t["__class_fullname__"] for t in meta.pipeline["eval"]["transform"]["transforms"]]
        out_console.print(f"eval pipeline: {' -> '.join(steps)}")
        fit = meta.calibration
        out_console.print(f"temperature {meta.temperature:g}" + (
            f" (fitted on {fit.get('source') or 'validation'}: ECE {fit.get('ece_before')} -> {fit.get('ece_after')})"
            if fit else " (uncalibrated)"))
        if meta.plan:
            choices = meta.plan.get("choices", {})
            out_console.print("planned: " + ", ".join(f"{k} {v}" for k, v in choices.items()))
        if meta.metrics:
            out_console.print("metrics at save: " + ", ".join(f"{k} {v}" for k, v in meta.metrics.items() if v != ""))
        out_console.print("versions: " + ", ".join(f"{k} {v}" for k, v in meta.versions.items()))

    run_guarded(action)


@app.command(epilog="Examples: unetcli export runs/cells/model-best --format onnx -o deploy/cells.onnx\n\n"
                     "unetcli export runs/cells/model-best --format folder --half -o share/cells")
def export(
    model: Annotated[Path, typer.Argument(help="Model folder (or a run folder: its model-best/ is used).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="File to write (FILE.json with preprocessing and classes goes next "
                                                          "to it), or a new folder for --format folder.")],
    fmt: Annotated[str, typer.Option("--format", help="onnx | torchscript | folder | auto (from the name: .onnx, .pt, no suffix = folder).")] = "auto",
    half: Annotated[bool, typer.Option("--half", help="folder only: store fp16 weights (half the size; loaded as fp32).")] = False,
    tolerance: Annotated[float | None, typer.Option("--tolerance", help="Largest accepted |logit difference| from PyTorch in the "
                                                       "check \\[default: 1e-3; with --half 0.01 of the largest |logit|].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a model to ONNX or TorchScript (fp32), or a clean model folder to share, checked numerically against PyTorch."""

    def action():
        import contextlib

        from ..checkpoint import resolve_model_dir
        from ..export import export_model

        busy = err_console.status(f"exporting to {escape(str(out))} ...") if interactive(as_json) else contextlib.nullcontext()
        with busy:
            result = export_model(resolve_model_dir(model), out, fmt, tolerance=tolerance, half=half)
        if as_json:
            print(json.dumps(result.to_dict()))
            return
        opset = f", opset {result.opset}" if result.opset else ""
        described = "description" if result.format == "folder" else "sidecar"
        out_console.print(f"{result.format}{opset}: {result.file}\n{described}: {result.sidecar}\n"
                          f"max abs difference from PyTorch: {result.max_abs_diff:.2e} (limit {result.tolerance:g}, "
                          f"input {'x'.join(map(str, result.check_input))})", markup=False)

    run_guarded(action)
