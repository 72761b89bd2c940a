"""The fast layer: contracts checked without training or loading a model (run alone: pytest -m "not slow").

What the CLI builds from flags and config files (with the training engine patched out), the typed model
description and its upgrade path, the library boundary (no prints, no global state changed at import) and the
size limits that keep the package readable.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import cli, ok, user_error

from unetcli.modelmeta import FORMAT_VERSION, ModelMeta
from unetcli.options import TrainOptions, load_config, train_option_fields

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "unetcli"
SHIPPED = REPO / "weights" / "membrane"
V1_MEMBRANE = Path(__file__).parent / "data" / "membrane_unetcli_v1.json"  # weights/membrane/unetcli.json as format 1


# ------------------------------------------------------------------------------------------ train's options


@pytest.fixture
def captured(monkeypatch):
    """Patch the training engine: `unetcli train` validates and builds its options, then stops there."""
    import unetcli.training

    seen: list[TrainOptions] = []

    def fake_train(options):
        seen.append(options)
        yield unetcli.training.TrainingDone(options.out, best_epoch=0, best_score=0.0, reason="completed")

    monkeypatch.setattr(unetcli.training, "train", fake_train)
    return seen


def test_flags_become_typed_options(captured, tmp_path):
    result = cli("train", tmp_path / "data", "-o", tmp_path / "run", "--epochs", "3", "--time-limit", "1h30m",
                 "--classes", "4", "--border-weight", "--class-map", REPO / "pyproject.toml", "--quiet")
    ok(result)
    (options,) = captured
    assert options == TrainOptions(out=tmp_path / "run", data=tmp_path / "data", epochs=3, time_limit=5400.0, classes=4,
                                   border_weight=True, class_map_file=REPO / "pyproject.toml")


def test_flags_override_the_config_file(captured, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TrainOptions(epochs=7, crop=64, encoder="resnet18").to_config(), "resume": True}))
    cli("train", "--config", config, "-o", tmp_path / "new", "--crop", "128", "--quiet")
    (options,) = captured
    assert (options.epochs, options.crop, options.encoder, options.out, options.resume) == (7, 128, "resnet18", tmp_path / "new", False)


def test_run_yaml_round_trips(tmp_path):
    options = TrainOptions(out=tmp_path / "r", data=tmp_path / "d", time_limit=600.0, classes=3, patience=4)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(options.to_config(), sort_keys=False))
    assert TrainOptions.from_values(load_config(tmp_path / "run.yaml")) == options


@pytest.mark.parametrize("content, fragment", [
    ({"epochs": 3, "epoch": 4}, "unknown option(s) epoch; valid keys: out, data,"),
    ({"epochs": "many"}, "epochs 'many' must be int"),
    ({"crop": 50}, "multiple of 32"),
    ({"loss": "dice+hinge"}, "hinge"),
    ({"encoder": "resnet9000"}, "unknown encoder 'resnet9000'"),
    ({"mask_mode": "gray"}, "unknown mask mode 'gray'"),
    ({"time_limit": "soon"}, "--time-limit 'soon'"),
    ({"foreground_crops": 2.0}, "--foreground-crops 2.0"),
])
def test_a_bad_config_file_is_one_error_line_before_any_data_is_read(captured, tmp_path, content, fragment):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(content))
    # DATA does not exist: reading it would be exit 3, so exit 2 shows the options were refused first
    user_error(cli("train", tmp_path / "missing", "--config", config, "-o", tmp_path / "run"), 2, fragment)
    assert not captured and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, fragment", [
    (["--patience", "0"], "--patience 0"),
    (["--class-weights", "1,x"], "--class-weights '1,x'"),
    (["--mask-mode", "grey"], "unknown mask mode 'grey'"),
    (["--class-map", "missing.json"], "missing.json"),
])
def test_bad_flags_are_refused_before_any_data_is_read(captured, tmp_path, flags, fragment):
    user_error(cli("train", tmp_path / "missing", "-o", tmp_path / "run", *flags), 2, fragment)
    assert not captured


def test_config_is_not_for_resumed_runs(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 3\n")
    user_error(cli("train", "--resume", tmp_path, "--config", tmp_path / "c.yaml"), 2, "--config and --resume")


def test_train_help_shows_the_options_defaults():
    text = ok(cli("train", "--help")).stdout
    declared = train_option_fields()
    assert {f.name for f in dataclasses.fields(TrainOptions)} - {f.name for f in declared} == {"resume", "set_by_user"}
    for field in declared:
        flag = (field.metadata.get("flag") or f"--{field.name.replace('_', '-')}").split("/")[-1]
        assert field.metadata.get("argument") or flag in text, flag


def test_python_train_refuses_bad_options_before_reading_data(tmp_path):
    import unetcli
    from unetcli.errors import UsageError

    with pytest.raises(UsageError, match="unknown option"):
        unetcli.train(tmp_path / "missing", out=tmp_path / "run", epoch=3)
    with pytest.raises(UsageError, match="multiple of 32"):
        unetcli.train(tmp_path / "missing", out=tmp_path / "run", crop=33)


# ---------------------------------------------------------------------------------------- the model folder


def test_the_shipped_description_is_current_and_has_no_local_paths():
    meta = json.loads((SHIPPED / "unetcli.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert not any(isinstance(v, str) and v.startswith("/") for v in meta["training"].values())
    for result in (REPO / "benchmarks" / "results").glob("*.json"):
        assert '"/' not in result.read_text(), result


def test_a_format_1_description_upgrades_to_the_same_model():
    old, new = ModelMeta.from_dict(json.loads(V1_MEMBRANE.read_text())), ModelMeta.load(SHIPPED)
    assert old.intensity is None and new.intensity is not None  # added to the shipped folder later (its README)
    assert dataclasses.replace(old.shareable(), intensity=new.intensity) == new
    assert old.to_dict()["format_version"] == FORMAT_VERSION


def test_format_1_defaults_are_what_format_1_readers_used():
    data = json.loads(V1_MEMBRANE.read_text())
    for key in ("tile", "threshold", "out_channels", "weights_dtype", "metrics", "epoch"):
        data.pop(key)
    meta = ModelMeta.from_dict(data)
    assert (meta.tile.size, meta.tile.overlap, meta.threshold, meta.out_channels, meta.weights_dtype) == (512, 0.25, 0.5, 2, "float32")


def test_description_round_trip_and_refusals(tmp_path):
    meta = ModelMeta.load(SHIPPED)
    assert ModelMeta.from_dict(meta.to_dict()) == meta
    folder = shutil.copytree(SHIPPED, tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors"))
    meta.save(folder)
    assert ModelMeta.load(folder) == meta
    for change, fragment in (({"format_version": FORMAT_VERSION + 1}, f"model format version {FORMAT_VERSION + 1}"),
                             ({"tile": {"size": 100, "overlap": 0.25}}, "tile size 100"),
                             ({"format": "other"}, "not a unetcli model description")):
        with pytest.raises(Exception, match=fragment):
            ModelMeta.from_dict({**meta.to_dict(), **change})


# -------------------------------------------------------------------------------------- the library boundary


def test_importing_unetcli_changes_no_global_state():
    code = (
        "import os, cv2, PIL.Image\n"
        "before = (dict(os.environ), PIL.Image.MAX_IMAGE_PIXELS, cv2.getNumThreads())\n"
        "import unetcli, pkgutil, importlib\n"
        "for m in pkgutil.iter_modules(unetcli.__path__):\n"
        "    if m.name not in ('cli', '__main__'):\n"
        "        importlib.import_module('unetcli.' + m.name)\n"
        "after = (dict(os.environ), PIL.Image.MAX_IMAGE_PIXELS, cv2.getNumThreads())\n"
        "print('SAME' if before == after else f'CHANGED {before} {after}')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("HF_HUB_OFFLINE", "NO_ALBUMENTATIONS_UPDATE")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SAME", done.stdout[-2000:]


def library_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts and p.name != "__main__.py"]


def test_only_the_cli_prints():
    for path in library_modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                pytest.fail(f"{path.name}:{node.lineno} prints")
            if isinstance(node, ast.Attribute) and node.attr in ("stderr", "stdout") and getattr(node.value, "id", "") == "sys":
                pytest.fail(f"{path.name}:{node.lineno} writes to sys.{node.attr}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("typer", "rich") for n in names), f"{path.name}:{node.lineno}"


def test_modules_and_functions_stay_small():
    """No module over 400 lines and no function over 60 (docs/decisions.md: the module map)."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert text.count("\n") <= 400, f"{path.relative_to(REPO)}: {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.relative_to(REPO)}: {node.name} has {length} lines"


# ------------------------------------------------------------------------------- predict's and evaluate's options


@pytest.mark.parametrize("command, library", [("predict", "unetcli.predictor:Predictor.from_folder"),
                                              ("evaluate", "unetcli.evaluate:evaluate_model")])
def test_predict_and_evaluate_flags_default_to_the_library_defaults(command, library):
    """predict and evaluate declare their flags in Typer; their defaults are checked here against the library
    function they call, so `unetcli predict` and `unetcli.load()` behave alike."""
    import importlib
    import inspect

    import typer.main

    from unetcli.cli import app

    module, _, attribute = library.partition(":")
    target = importlib.import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    wanted = {name: p.default for name, p in inspect.signature(target).parameters.items() if p.default is not inspect.Parameter.empty}
    click_command = typer.main.get_command(app).commands[command]
    declared = {p.name: p.default for p in click_command.params}
    shared = set(wanted) & set(declared)
    assert {"device", "precision", "tile", "tta"} <= shared, shared
    for name in shared:
        assert declared[name] == wanted[name], f"{command} --{name}: CLI default {declared[name]!r}, library {wanted[name]!r}"
