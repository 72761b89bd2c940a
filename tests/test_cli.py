"""The command-line surface: documented commands, help with examples, fast --help, exit codes, error lines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from helpers import cli, describe, ok, user_error, write_image

from unetcli.cli import app

REPO = Path(__file__).resolve().parents[1]
COMMANDS = sorted(typer.main.get_command(app).commands)  # every command, including ones added later


def test_the_expected_commands_exist():
    assert {"train", "predict", "evaluate", "check", "info", "demo"} <= set(COMMANDS)


def readme_sections() -> dict[str, str]:
    """Markdown heading -> the text below it, up to the next heading."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    heading = ""
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            sections[heading] = ""
        else:
            sections[heading] = sections.get(heading, "") + line + "\n"
    return sections


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_readme_section(command):
    sections = readme_sections()
    mine = [h for h in sections if re.search(rf"\b{command}\b", h)]
    assert mine, f"README.md has no section heading for `unetcli {command}` (headings: {list(sections)})"
    assert any(f"unetcli {command}" in h + "\n" + sections[h] for h in mine), \
        f"README.md's section on {command} does not show `unetcli {command}`"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_ends_with_an_example(command):
    result = ok(cli(*([command] if command else []), "--help"))
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    tail = " ".join(lines[-3:])
    assert "Example" in tail, f"`unetcli {command or ''} --help` does not end with an example:\n{result.stdout}"
    assert "unetcli " in tail
    if command:
        assert "Usage: unetcli " + command in result.stdout


def test_help_does_not_import_torch():
    """`unetcli --help` and each command's --help answer without importing torch, smp or albumentations."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from unetcli.cli import app\n"
        f"for args in [['--help'], ['--version'], *[[c, '--help'] for c in {COMMANDS!r}]]:\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "heavy = ('torch', 'segmentation_models_pytorch', 'albumentations', 'timm')\n"
        "print('HEAVY=' + ','.join(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "HEAVY=\n" in done.stdout, f"--help imported {done.stdout.strip()}"


def test_console_script_and_module_entry_points():
    script = Path(sys.executable).parent / "unetcli"  # installed by pip install -e .
    for command in ([str(script)], [sys.executable, "-m", "unetcli"]):
        done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 and done.stdout.startswith("unetcli "), (command, done.stderr)
    done = subprocess.run([sys.executable, "-m", "unetcli", "info", "/nonexistent/model"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 4
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_no_arguments_shows_help():
    result = cli()
    assert result.exit_code in (0, 2)
    assert "Usage" in result.output and "train" in result.output


# --------------------------------------------------------------------------------------------- exit codes


def tiny_data(tmp_path):
    import numpy as np

    write_image(tmp_path / "data" / "images" / "a.png", np.zeros((40, 40), np.uint8))
    write_image(tmp_path / "data" / "masks" / "a.png", np.zeros((40, 40), np.uint8))
    return tmp_path / "data"


@pytest.mark.parametrize("args, fragment", [
    (["train", "{data}", "-o", "{tmp}/run", "--classes", "many"], "--classes 'many'"),
    (["train", "{data}", "-o", "{tmp}/run", "--time-limit", "soon"], "--time-limit 'soon'"),
    (["train", "{data}", "-o", "{tmp}/run", "--crop", "50"], "multiple of 32"),
    (["train", "{data}", "-o", "{tmp}/run", "--encoder", "resnet9000"], "unknown encoder 'resnet9000'"),
    (["train", "{data}", "-o", "{tmp}/run", "--precision", "fp8"], "--precision 'fp8'"),
    (["train", "{data}", "-o", "{tmp}/run", "--loss", "dice+hinge"], "hinge"),
    (["train", "{data}", "-o", "{tmp}/run", "--augment", "{tmp}/missing.yaml"], "--augment"),
    (["train", "{data}", "-o", "{tmp}/run", "--val-split", "1.5"], "--val-split"),
    (["predict", "{tmp}/model", "{tmp}/x.png", "-o", "{tmp}/out", "--shard", "5/4"], "--shard '5/4'"),
    (["predict", "{tmp}/model", "@{tmp}/no-list.txt", "-o", "{tmp}/out"], "no-list.txt"),
    (["predict", "{tmp}/model", "{tmp}/x.png", "-o", "{tmp}/out", "--batch-size", "-2"], "--batch-size -2"),
])
def test_usage_errors_exit_2_with_one_error_line(tmp_path, args, fragment):
    data = tiny_data(tmp_path)
    args = [a.format(data=data, tmp=tmp_path) for a in args]
    user_error(cli(*args), 2, fragment)
    assert not (tmp_path / "run").exists()


def test_typer_usage_errors_exit_2_without_traceback(tmp_path):
    for args in (["train", "--bogus"], ["predict"], ["check", "--epochs", "x"], ["frobnicate"]):
        result = cli(*args)
        assert result.exit_code == 2, describe(result)
        assert "Traceback" not in result.output


def test_data_errors_exit_3(tmp_path):
    user_error(cli("train", tmp_path / "missing", "-o", tmp_path / "run"), 3, "no such folder")
    user_error(cli("check", tmp_path / "missing"), 3, "no such folder")


def test_model_errors_exit_4(tmp_path):
    user_error(cli("info", tmp_path), 4, "missing")


def test_internal_errors_exit_1_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    import unetcli.data

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(unetcli.data, "find_pairs", broken)
    data = tiny_data(tmp_path)
    line = user_error(cli("check", data), 1, "internal error: ZeroDivisionError: a bug")
    assert "--debug" in line
    result = cli("--debug", "check", data)
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)


def test_check_json_is_machine_readable(tmp_path):
    report = json.loads(ok(cli("check", tiny_data(tmp_path), "--json")).stdout)
    assert report["pairs"] == 1 and report["channels"] == 1 and report["problems"] == []
