"""Shared fixtures: tiny generated datasets on disk and one small model trained through the CLI.

Everything is made in pytest's tmp folders; nothing touches the network (models start from random weights).
"""

from __future__ import annotations

import os

# Before typer/rich are imported (their consoles read these once): wide, plain, stable output.
os.environ["TERMINAL_WIDTH"] = "200"
os.environ["COLUMNS"] = "200"
os.environ["NO_COLOR"] = "1"
for _name in ("FORCE_COLOR", "PY_COLORS", "GITHUB_ACTIONS"):
    os.environ.pop(_name, None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One torch thread unless the caller says otherwise (OMP_NUM_THREADS=2 python -m pytest ...). On an idle
# 2-core machine this makes the suite about 1.6x slower (3.5 instead of 2.1 minutes), but while anything else
# runs (a benchmark, a second test run) two spinning OpenMP threads per process make training 5-15x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import TINY_TRAIN, cli, ok, write_binary_dataset


@dataclass(frozen=True)
class TrainedRun:
    data: Path  # DATA folder it was trained on (images/, masks/ with 0/255 masks)
    run: Path  # the run folder
    output: str  # what `unetcli train` printed (stdout + stderr)

    @property
    def model(self) -> Path:
        return self.run / "model-best"

    @property
    def images(self) -> list[Path]:
        return sorted((self.data / "images").iterdir())


@pytest.fixture(scope="session")
def binary_data(tmp_path_factory) -> Path:
    """Six gray 80x96 images (not a multiple of 32) with 0/255 masks."""
    return write_binary_dataset(tmp_path_factory.mktemp("binary") / "data")


@pytest.fixture(scope="session")
def trained(binary_data, tmp_path_factory) -> TrainedRun:
    """One tiny binary model trained through `unetcli train`, shared by every test that only reads it."""
    run = tmp_path_factory.mktemp("runs") / "binary"
    result = ok(cli("train", binary_data, "-o", run, *TINY_TRAIN))
    return TrainedRun(binary_data, run, result.output)
