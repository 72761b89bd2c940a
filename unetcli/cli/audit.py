"""`unetcli audit`: rank the training pairs whose masks disagree most with an out-of-fold prediction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .app import ClassMapOpt, DataArg, DeviceOpt, IgnoreOpt, ImagesOpt, JsonOpt, MaskModeOpt, MasksOpt, PrecisionOpt, QuietOpt, app, err_console, out_console, run_guarded


@app.command(epilog="Example: unetcli audit data/ -o audit/ --folds 5 --time-limit 10m")
def audit(
    data: DataArg = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for audit.csv, audit.png and the fold models (models/).")] = Path("audit"),
    images: ImagesOpt = None,
    masks: MasksOpt = None,
    mask_mode: MaskModeOpt = None,
    class_map: ClassMapOpt = None,
    ignore_index: IgnoreOpt = None,
    folds: Annotated[int, typer.Option("--folds", help="Models trained; each predicts the K-th of the pairs it did not see.")] = 5,
    time_limit: Annotated[str, typer.Option("--time-limit", help="Training time for all folds together, e.g. 10m, 1h.")] = "10m",
    config: Annotated[Path | None, typer.Option("--config", help="YAML of train options for the fold models (run.yaml keys).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the folds' split and training \\[default: 0].")] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    show: Annotated[int, typer.Option("--show", help="Pairs drawn in audit.png, worst first (audit.csv lists all).")] = 10,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Reuse a non-empty OUT.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Find suspicious masks: train K models out of fold, rank pairs by disagreement with their masks."""

    def action():
        from ..audit import Audited
        from ..audit import audit as run_audit
        from ..options import TrainOptions, load_config
        from .train import render_folds

        given = {"data": data, "images": images, "masks": masks, "mask_mode": mask_mode, "class_map_file": class_map,
                 "ignore_index": ignore_index, "folds": folds, "time_limit": time_limit, "seed": seed, "device": device,
                 "precision": precision, "overwrite": overwrite, "out": out / "models"}
        # what is typed wins over --config, which wins over the train defaults (mask mode auto, seed 0, device auto)
        values = {**(load_config(config) if config is not None else {}), **{k: v for k, v in given.items() if v is not None}}
        options = TrainOptions.from_values(values, str(config or "audit")).validate()
        if out.exists() and any(out.iterdir()) and not overwrite:
            from ..errors import UsageError

            raise UsageError(f"{out}: already exists and is not empty; choose another -o or pass --overwrite")
        events = run_audit(options, out, shown=max(show, 0))
        render_folds(options, quiet=quiet, as_json=as_json, events=events)
        for event in events:
            if isinstance(event, Audited):
                _report(event, quiet=quiet, as_json=as_json)

    run_guarded(action)


def _report(event, *, quiet: bool, as_json: bool) -> None:
    if as_json:
        for rank, row in enumerate(event.rows, 1):
            print(json.dumps({"rank": rank, "stem": row.stem, "disagreement": round(row.disagreement, 6),
                              "dice": None if row.dice != row.dice else round(row.dice, 6), "classes": row.classes,
                              "fold": row.fold, "image": str(row.image), "mask": str(row.mask)}))
        return
    if quiet:
        return
    for rank, row in enumerate(event.rows[:10], 1):
        out_console.print(f"{rank:>3}. {row.stem}  disagreement {row.disagreement:.1%}  {row.classes}", markup=False, soft_wrap=True)
    err_console.print(f"ranked {len(event.rows)} pairs, worst first: {event.csv}, {event.png}", markup=False)
