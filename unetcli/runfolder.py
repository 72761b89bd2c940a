"""The run folder's own files: the check that it can be created, history.csv, curves.png and run.yaml.
(model-best/ and model-last/ are model folders, written by `checkpoint.save_model_folder`.)"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from .errors import OutputError, UsageError
from .images import write_bytes_atomic, write_png
from .options import TrainOptions
from .report import training_curves


def check_run_folder(options: TrainOptions) -> None:
    """A new run needs an empty (or new) folder that can be created; a resumed run reuses its folder."""
    out = Path(options.out)
    if options.resume:
        return
    if out.exists() and any(out.iterdir()) and not options.overwrite:
        raise UsageError(f"{out}: the run folder already exists and is not empty; choose another -o or pass --overwrite")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise OutputError(f"{out}: cannot create the run folder ({parent} is a file, not a folder); choose another -o")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{out}: cannot create the run folder ({parent} is not writable); choose another -o")


def write_run_yaml(run_dir: Path, options: TrainOptions) -> None:
    """run.yaml: the resolved options, in field order; `train --config run.yaml` reads them back."""
    import yaml

    write_bytes_atomic(run_dir / "run.yaml", yaml.safe_dump(options.to_config(), sort_keys=False).encode())


def epoch_row(epoch: int, train_loss: float, val_loss: float | None, *, lr: float, seconds: float,
              names: list[str], dice: list[float], iou: list[float]) -> dict:
    """One history.csv row: losses, learning rate and time, then Dice and IoU per class name."""
    row = {"epoch": epoch, "train_loss": round(train_loss, 6), "val_loss": "" if val_loss is None else round(val_loss, 6),
           "lr": f"{lr:.3g}", "seconds": round(seconds, 2)}
    for name, d, i in zip(names, dice, iou):
        row[f"dice_{name}"], row[f"iou_{name}"] = round(d, 6), round(i, 6)
    return row


def row_metrics(row: dict) -> dict:
    """An epoch row without its learning rate and time: the metrics model folders store."""
    return {k: v for k, v in row.items() if k not in ("lr", "seconds")}


def write_history(run_dir: Path, rows: list[dict]) -> None:
    """history.csv (one row per epoch so far) and curves.png drawn from it."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(run_dir / "history.csv", buffer.getvalue().encode())
    write_png(run_dir / "curves.png", training_curves(rows))
