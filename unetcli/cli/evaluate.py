"""`unetcli evaluate` (a model, or a folder of predictions, against the truth) and `unetcli check` (a dataset)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .app import (
    ClassesOpt,
    ClassMapOpt,
    DataArg,
    DeviceOpt,
    IgnoreOpt,
    ImagesOpt,
    JsonOpt,
    MaskModeOpt,
    MasksOpt,
    PrecisionOpt,
    QuietOpt,
    app,
    class_table,
    fmt,
    out_console,
    run_guarded,
    say,
    scores_table,
)


def render_evaluation(events, log=None):
    """The finished Evaluation; `log` (a progress.CountLog) gets a tick per scored image."""
    from ..evaluate import Evaluation

    evaluation = None
    for event in events:
        if isinstance(event, Evaluation):
            evaluation = event
        elif log is not None:
            log.advance()
    return evaluation


def _pair_count(data: Path | None, images: Path | None, masks: Path | None) -> int | None:
    """How many pairs `evaluate_model` will score; None when the folders have a problem (it reports that itself)."""
    from ..data import find_pairs, resolve_layout
    from ..errors import UnetcliError

    try:
        return len(find_pairs(*resolve_layout(data, images, masks)))
    except UnetcliError:
        return None


@app.command(epilog="Examples: unetcli evaluate runs/cells/model-best test/   |   unetcli evaluate --pred out/ --gt test/masks/")
def evaluate(
    model: Annotated[Path | None, typer.Argument(help="Model folder to score (omit with --pred/--gt).")] = None,
    data: DataArg = None,
    images: ImagesOpt = None,
    masks: MasksOpt = None,
    pred: Annotated[Path | None, typer.Option("--pred", help="Folder of predicted masks (scored without a model).")] = None,
    gt: Annotated[Path | None, typer.Option("--gt", help="Folder of true masks, for --pred.")] = None,
    mask_mode: MaskModeOpt = "auto",
    class_map: ClassMapOpt = None,
    tile: Annotated[str, typer.Option("--tile", help="As for predict: auto | off | N.")] = "auto",
    tta: Annotated[bool, typer.Option("--tta", help="Average over flips, as predict --tta.")] = False,
    per_image: Annotated[Path | None, typer.Option("--per-image", help="Write per-image scores and counts (CSV).")] = None,
    summary_file: Annotated[Path | None, typer.Option("--summary", help="Write the summary (JSON).")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write a PNG: Dice per class, confusion matrix, worst images.")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score a model, or a folder of predictions, against ground-truth masks."""

    def action():
        from ..checkpoint import resolve_model_dir
        from ..evaluate import evaluate_folders, evaluate_model
        from .progress import CountLog, plain_progress

        log = CountLog("evaluate", None) if plain_progress(quiet) else None
        if pred is not None or gt is not None:
            if pred is None or gt is None or model is not None:
                raise UsageError("use either MODEL DATA, or --pred DIR --gt DIR (both, without a model)")
            events = evaluate_folders(pred, gt, mask_mode, class_map)
        else:
            if model is None:
                raise UsageError("give a MODEL folder and DATA (or --pred DIR --gt DIR)")
            if log is not None:
                log.total = _pair_count(data, images, masks)
            events = evaluate_model(resolve_model_dir(model), data, images=images, masks=masks, device=device, precision=precision,
                                    tile=tile, tta=tta)
        evaluation = render_evaluation(events, log)
        evaluation.write(per_image, summary_file, report)
        summary = evaluation.summary()
        if as_json:
            print(json.dumps(summary))
        else:
            out_console.print(scores_table(summary))
            if summary.get("ece") is not None:
                bins = len(summary["reliability"]["pixels"])
                out_console.print(f"calibration: ECE {fmt(summary['ece'])} ({bins} confidence bins), Brier score "
                                  f"{fmt(summary['brier'])}, over {summary['calibration_pixels']} sampled pixels",
                                  soft_wrap=True)
            if summary.get("objects"):
                out_console.print(objects_table(summary))

    run_guarded(action)


def objects_table(summary: dict):
    """Object and boundary scores (summary["objects"]): one row per measure, one column per object class."""
    from rich.table import Table

    def pair(entry: dict, *keys: str) -> str:
        return " / ".join(str(entry[k]) if isinstance(entry[k], int) else fmt(entry[k]) for k in keys)

    rows = {"objects: true / predicted": ("true_objects", "predicted_objects"),
            "F1 / precision / recall at IoU 0.5": ("f1_50", "precision_50", "recall_50"),
            "DSB2018 score (IoU 0.5-0.95)": ("dsb_score",), "splits / merges": ("splits", "merges"),
            "adapted Rand error": ("rand_error",), "VI split / merge (bits)": ("vi_split", "vi_merge")}
    isbi, threshold = summary.get("isbi_pixel_error"), summary.get("isbi_threshold")
    title = "objects: counts summed over images; DSB, Rand and VI: image means"
    if isbi is not None:
        title += f"\nISBI pixel error (1 - max foreground F) {fmt(isbi)}" + (f" at p > {threshold:g}" if threshold is not None else "")
    table = Table(title=title)
    table.add_column("measure", justify="left")
    for name in summary["objects"]:
        table.add_column(name, justify="right")
    for label, keys in rows.items():
        table.add_row(label, *(pair(entry, *keys) for entry in summary["objects"].values()))
    return table


def _check_summary(report: dict) -> str:
    """check's findings as one line of words (nothing printed as None when a fact is unknown)."""
    pairs, readable = report["pairs"], report["readable"]
    pairs_text = f"{pairs} pair{'' if pairs == 1 else 's'}"
    if report.get("stacks"):  # stack file -> its pages, each a pair
        stacks = report["stacks"]
        listed = [f"{Path(name).name}: {count} pages" for name, count in stacks.items()]
        pairs_text += f" ({'; '.join(listed[:3])}{'; ...' if len(listed) > 3 else ''})"
    if not readable:
        return f"{pairs_text}, none readable: see the problems below"
    channels = report["channels"]
    facts = [f"{pairs_text}, {readable} readable",
             f"{channels} channel{'' if channels == 1 else 's'}" if channels else "mixed channel counts",
             f"pixel type {', '.join(report['dtypes'])}"]
    (low_h, low_w), (high_h, high_w) = report["min_size"], report["max_size"]
    same = (low_h, low_w) == (high_h, high_w)
    facts.append(f"size {low_w}x{low_h} (w x h)" if same else f"sizes {low_w}..{high_w} wide x {low_h}..{high_h} high")
    return "; ".join(facts)


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
        from ..data import find_pairs, resolve_layout
        from ..options import parse_classes
        from ..scan import scan_dataset

        pairs = find_pairs(*resolve_layout(data, images, masks))
        scan = scan_dataset(pairs, mask_mode=mask_mode, ignore_value=ignore_index, class_map_file=class_map,
                            num_classes=parse_classes(classes))
        sizes = scan.sizes
        from ..stacks import stack_pages

        report = {
            "pairs": len(pairs),
            "stacks": {str(path): count for path, count in stack_pages(pairs).items()},
            "readable": len(scan.samples),
            "channels": scan.in_channels,
            "alpha": scan.alpha.to_dict() if scan.alpha else None,
            "dtypes": sorted({s.dtype for s in scan.samples}),
            "min_size": [min(h for h, _ in sizes), min(w for _, w in sizes)] if sizes else None,
            "max_size": [max(h for h, _ in sizes), max(w for _, w in sizes)] if sizes else None,
            "classes": scan.class_map.to_dict() if scan.class_map else None,
            "class_pixels": scan.class_pixels,
            "ignored_pixels": scan.ignored_pixels,
            "problems": scan.problems,
            "notes": scan.notes,
        }
        if as_json:
            print(json.dumps(report))
        else:
            out_console.print(_check_summary(report), soft_wrap=True)
            if scan.alpha:
                out_console.print(scan.alpha.note(), soft_wrap=True)
            for note in scan.notes:  # masks that look like object ids: read as instances, or --mask-mode instances
                out_console.print(f"hint: {note}", soft_wrap=True, markup=False)
            if scan.class_map:
                out_console.print(class_table(scan.class_map, scan.class_pixels, scan.ignored_pixels))
            for problem in scan.problems:
                say("problem", problem)
            if not scan.problems:
                out_console.print("no problems found")
        return 3 if scan.problems else 0

    run_guarded(action)
