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
# One torch thread per process unless the caller says otherwise (OMP_NUM_THREADS=2 python -m pytest ...): the
# suite runs one pytest-xdist worker per core (pyproject.toml), and two spinning OpenMP threads per process on a
# busy machine made training 5-15x slower. In one process the suite kept 1.04 of 2 cores busy on average; two
# workers took it from 12.3 to 6.3 minutes (AVX-512 with bf16, membrane tests included).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import MEMBRANE, TINY_TRAIN, cli, link_slices, ok, write_binary_dataset


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


@pytest.fixture(scope="session")
def membrane_run(tmp_path_factory) -> Path:
    """A resnet18 U-Net with the narrow decoder (the planner's smallest candidate: decoder 128, peak learning
    rate 6e-3) trained briefly (8 x 64 crops of 256 pixels, default precision) on the ISBI 2012 slices 0-24, where
    ../shared/datasets/membrane is present; used by both tests of test_membrane.py. Default seed 0; for the
    measured margins see those two tests. The 256-wide decoder of before scored the same and took 1.4x as long to
    train (two threads, seed 0: bf16 61 s against 44 s; AVX2 stand-in 142 s against 104 s)."""
    if not (MEMBRANE / "images").is_dir():
        pytest.skip(f"{MEMBRANE} is not present")
    root = tmp_path_factory.mktemp("membrane")
    train = link_slices(root / "train", range(25))
    ok(cli("train", train, "-o", root / "run", "--encoder", "resnet18", "--decoder-width", "128", "--lr", "6e-3",
           "--crop", "256", "--epochs", "8", "--samples-per-epoch", "64", "--batch-size", "8", "--val-split", "0",
           "--augment", "light", "--no-plan", "--quiet"))
    return root / "run"


# ------------------------------------------------------------------------------------- the two speeds
#
# `python -m pytest -m "not slow"` is the fast layer (well under a minute on 2 cores): nothing is trained and
# nothing but a tiny untrained model is built. Every test that trains is marked `slow` here, so a new test that
# uses a training fixture or trains through the CLI needs no marker of its own. Found from the source: a test
# trains when it, a fixture it depends on (directly or through other fixtures), or a module-level helper of its
# test module that it calls, trains successfully. Tests that train in ways this cannot see carry
# @pytest.mark.slow themselves.

# A call that trains for real: in-process through the CLI (a refusal, `user_error(cli("train", ...))`, does not
# train), in a subprocess, or under torchrun.
TRAINS = re.compile(r'ok\(\s*cli\(\s*"(?:train|demo)"|torchrun\(\s*"train"|start_training\(|unetcli\(\s*"train"')
TRAINING_FIXTURES = {"trained", "confident", "membrane_run"}  # the shared ones by name; others are found from their source


def _source(function) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def _training_helpers(module) -> set[str]:
    """Names of the module's own plain functions that train (e.g. test_mask_modes.train_and_predict)."""
    found = getattr(module, "_training_helpers", None)
    if found is None:
        functions = {name: f for name, f in vars(module).items()
                     if inspect.isfunction(f) and f.__module__ == module.__name__ and not name.startswith("test_")}
        found = {name for name, f in functions.items() if TRAINS.search(_source(f))}
        module._training_helpers = found
    return found


def _trains(function, helpers: set[str]) -> bool:
    source = _source(function)
    return bool(TRAINS.search(source)) or any(re.search(rf"\b{name}\(", source) for name in helpers)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") or not isinstance(item, pytest.Function):
            continue
        helpers = _training_helpers(item.module)
        fixtures = [d for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
        if (TRAINING_FIXTURES & set(item.fixturenames) or _trains(item.function, helpers)
                or any(_trains(d.func, _training_helpers(inspect.getmodule(d.func)) if inspect.getmodule(d.func) else set())
                       for d in fixtures if d.baseid)):  # baseid "": pytest's own fixtures (tmp_path, ...)
            item.add_marker(pytest.mark.slow)
