"""`unetcli predict`: a batch of images through a model folder, one result line per input."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import EXIT_DATA, EXIT_PARTIAL, UsageError
from ..instances import DEFAULT_MIN_SIZE
from .app import DeviceOpt, JsonOpt, PrecisionOpt, QuietOpt, app, err_console, interactive, run_guarded, say


def render_predictions(results, *, as_json: bool, quiet: bool, total: int) -> int:
    """Print results as they come; return the exit code: 5 when some inputs failed and others succeeded,
    the failures' own code (3 for bad files) when every input failed."""
    from rich.progress import Progress

    from .progress import CountLog, plain_progress

    failed = ok = skipped = 0
    failure_codes = []
    progress = Progress(console=err_console, transient=True) if interactive(quiet) else None
    log = CountLog("predict", total) if plain_progress(quiet) else None
    task = progress.add_task("predicting", total=total) if progress else None
    if progress:
        progress.start()
    try:
        for result in results:
            if result.status == "error":
                failed += 1
                failure_codes.append(result.exit_code or EXIT_DATA)
                say("error", result.error)
            elif result.status == "skipped":
                skipped += 1
            else:
                ok += 1
                if result.warning and not quiet:
                    say("warning", result.warning)
            if as_json:
                print(result.to_json(), flush=True)
            if progress:
                progress.advance(task)
            if log:
                log.advance(counted=result.status != "skipped")
    finally:
        if progress:
            progress.stop()
    if not quiet:
        from ..runtime import TorchrunEnv

        env = TorchrunEnv.read()  # under torchrun each rank reports its own share
        share = f"rank {env.rank} of {env.world}: " if env.world > 1 else ""
        err_console.print(f"{share}{ok} predicted, {skipped} skipped, {failed} failed")
    if not failed:
        return 0
    return EXIT_PARTIAL if ok or skipped else max(failure_codes)


def options_save(save: str) -> tuple[str, ...]:
    from ..outputs import resolve_save

    return resolve_save(tuple(s.strip() for s in save.split(",") if s.strip()))


def instance_options(objects: str | None, split: str | None, min_size: int | None, save: tuple[str, ...]):
    """--objects, --split and --min-size, which only apply with --save instances."""
    from ..instances import InstanceOptions, parse_objects

    given = [flag for flag, value in (("--objects", objects), ("--split", split), ("--min-size", min_size)) if value is not None]
    if given and "instances" not in save:
        raise UsageError(f"{', '.join(given)}: only used with --save instances; add instances to --save")
    return InstanceOptions(objects=parse_objects(objects), split="auto" if split is None else split.strip().lower(),
                           min_size=DEFAULT_MIN_SIZE if min_size is None else min_size)


@app.command(epilog="Example: unetcli predict runs/cells/model-best images/ -o predictions/ --save mask,overlay")
def predict(
    model: Annotated[Path, typer.Argument(help="Model folder (or a run folder: its model-best/ is used).")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders, globs, @list.txt, or - for paths on stdin.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (created if missing).")],
    save: Annotated[str, typer.Option("--save", help="Files to add to the mask: comma list of color (or colour), overlay, probs (16-bit PNGs: "
                                      "value / 65535 = probability), instances (<stem>_instances.tif, one id per object, and "
                                      "OUT/objects.csv, one row per object); the mask is always written unless -mask is listed.")] = "mask",
    objects: Annotated[str | None, typer.Option("--objects", metavar="CLASS,...", help="--save instances: the classes that are objects "
                                                "(default: every class but the background and a border class).")] = None,
    split: Annotated[str | None, typer.Option("--split", metavar="auto|off", help="--save instances: auto splits touching objects (by the "
                                              "model's border class, else a watershed on the distance transform); off keeps connected "
                                              "regions whole (default auto).")] = None,
    min_size: Annotated[int | None, typer.Option("--min-size", metavar="PIXELS", help="--save instances: drop objects of fewer pixels "
                                                 f"(default {DEFAULT_MIN_SIZE}).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Same-size images (or tiles) per forward pass, at most; 0: auto "
                                            "(about a quarter megapixel per pass on CPU, the fastest there; up to 8 images on GPUs).")] = 0,
    threshold: Annotated[float | None, typer.Option("--threshold", help="Foreground probability threshold (binary models).")] = None,
    tile: Annotated[str, typer.Option("--tile", help="auto (the model's tile size) | off | N: images larger than N are predicted in overlapping tiles.")] = "auto",
    overlap: Annotated[float | None, typer.Option("--overlap", help="Tile overlap share (default 0.25).")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average over flips (4x slower).")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model: faster on many images of one size, "
                                                "after a compile of a minute or more (needs a C++ compiler on CPU); falls back to eager if it fails.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose outputs already exist.")] = False,
    shard: Annotated[str | None, typer.Option("--shard", help="K/N: process only the K-th of N interleaved shares.")] = None,
    review: Annotated[int | None, typer.Option("--review", metavar="N", help="Write OUT/review.png (a contact sheet of the N most "
                                               "doubtful predictions' overlays) and OUT/review.txt (their paths, most doubtful first).")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Segment images with a trained model; writes masks in the training masks' own values."""

    def action():
        import sys

        from ..checkpoint import resolve_model_dir
        from ..inputs import parse_shard, resolve_inputs
        from ..outputs import PredictOptions
        from ..predict import predict_files
        from ..predictor import Predictor
        from ..runtime import TorchrunEnv

        if batch_size < 0:
            raise UsageError(f"--batch-size {batch_size}: use 0 (auto) or a positive number of images")
        paths = resolve_inputs(inputs, stdin=sys.stdin)
        share = parse_shard(shard)
        env = TorchrunEnv.read()
        if shard is None and env.world > 1:  # under torchrun each rank takes its share
            share = (env.rank + 1, env.world)
        options = PredictOptions(out_dir=out, save=tuple(s.strip() for s in save.split(",") if s.strip()),
                                 skip_existing=skip_existing, shard=share, review=review,
                                 instances=instance_options(objects, split, min_size, options_save(save)))
        predictor = Predictor.from_folder(resolve_model_dir(model), device=device, precision=precision, tile=tile,
                                          overlap=overlap, tta=tta, threshold=threshold, batch_size=batch_size,
                                          compile_model=compile_model)
        return render_predictions(predict_files(predictor, paths, options), as_json=as_json, quiet=quiet, total=len(paths))

    run_guarded(action)
