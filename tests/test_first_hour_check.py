"""`unetcli check` in words: what is known when nothing is readable, one line per fact on a narrow pipe, and the
share of ignored pixels (issue 16, point 6)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from helpers import cli, write_binary_dataset, write_image


def test_check_without_a_readable_pair_prints_no_python_leftovers(tmp_path):
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / "images").mkdir(parents=True, exist_ok=True)
        (data / "masks").mkdir(parents=True, exist_ok=True)
        (data / "images" / f"{name}.png").write_bytes(b"not a png")
        write_image(data / "masks" / f"{name}.png", np.zeros((8, 8), np.uint8))
    result = cli("check", data)
    assert result.exit_code == 3
    assert "2 pairs, none readable" in result.stdout
    assert "None" not in result.stdout + result.stderr
    assert "[]" not in result.stdout


def test_check_keeps_each_fact_on_one_line_when_piped_narrow(tmp_path):
    data = write_binary_dataset(tmp_path / "data", count=3)
    env = {**os.environ, "COLUMNS": "40", "TERMINAL_WIDTH": "40"}
    done = subprocess.run([sys.executable, "-m", "unetcli", "check", str(data)], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    summary = done.stdout.splitlines()[0]
    assert summary.startswith("3 pairs, 3 readable") and "size 96x80 (w x h)" in summary


def test_check_shows_the_share_of_ignored_pixels(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(3):
        mask = np.zeros((32, 32), np.uint8)
        mask[:8] = 255  # foreground: a quarter
        mask[8:16] = 128  # ignored: a quarter
        write_image(data / "images" / f"{i}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
        write_image(data / "masks" / f"{i}.png", mask)
    result = cli("check", data, "--ignore-index", "128")
    assert result.exit_code == 0, result.output
    ignored_row = next(line for line in result.stdout.splitlines() if "(ignored)" in line)
    assert "25.0 %" in ignored_row
    assert any("50.0 %" in line for line in result.stdout.splitlines() if "background" in line or "class_0" in line)
