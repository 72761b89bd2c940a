"""Folders of many small files (issue 15): pairing reads no file, scanning keeps no pixels and says how far it
is, and check, train and predict go through 2,000 pairs. Times are measured by benchmarks/bench_huge_folder.py,
not asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import TINY_TRAIN, cli, json_lines, ok

from unetcli.data import find_pairs, resolve_layout

PAIRS = 2000


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """2,000 pairs of 64 x 64 PNGs: a bright square on noise, its mask 0/255."""
    data = tmp_path_factory.mktemp("many")
    (data / "images").mkdir()
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(PAIRS):
        y, x = rng.integers(0, 40, 2)
        mask = np.zeros((64, 64), np.uint8)
        mask[y:y + 24, x:x + 24] = 255
        image = (rng.integers(0, 80, (64, 64)) + mask // 2).astype(np.uint8)
        cv2.imwrite(str(data / "images" / f"{i:05d}.png"), image)
        cv2.imwrite(str(data / "masks" / f"{i:05d}.png"), mask)
    return data


def test_pairing_opens_no_file(tmp_path):
    """Files that are no images at all pair by name: pairing only lists the folders."""
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for i in range(PAIRS):
            (tmp_path / sub / f"{i:05d}.png").write_bytes(b"not a png")
    pairs = find_pairs(*resolve_layout(tmp_path))
    assert len(pairs) == PAIRS and pairs[-1].stem == f"{PAIRS - 1:05d}"


def test_check_reads_every_pair(many):
    report = json.loads(ok(cli("check", many, "--json")).stdout)
    assert report["pairs"] == report["readable"] == PAIRS and report["problems"] == []
    assert report["max_size"] == [64, 64] and report["dtypes"] == ["uint8"]


@pytest.mark.slow
def test_train_says_how_far_reading_is_then_predict_streams(many, tmp_path):
    # an epoch is at least one crop per training image (1,900 here: two minutes on an AVX2-only CPU); the time
    # limit cuts it after about 20 s, since what is tested here is reading and streaming, not the model
    run = tmp_path / "run"
    log = tmp_path / "train.log"
    env = {**os.environ, "UNETCLI_PROGRESS_SECONDS": "0.01", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as stderr:
        done = subprocess.run([sys.executable, "-m", "unetcli", "train", str(many), "-o", str(run), *TINY_TRAIN,
                               "--epochs", "1", "--val-split", "0.05", "--cache", "none", "--time-limit", "20s"],
                              check=False, stderr=stderr, env=env, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text
    assert f"reading data: {PAIRS * 19 // 20}/{PAIRS * 19 // 20} pairs" in text and f"reading data: {PAIRS // 20}/{PAIRS // 20} pairs" in text
    assert "data cache: none: streaming" in text
    out = tmp_path / "pred"
    # the whole folder is listed and checked for output collisions; a twentieth of it is predicted (time)
    lines = json_lines(ok(cli("predict", run / "model-best", many / "images", "-o", out, "--json", "--shard", "1/20")).stdout)
    assert len(lines) == PAIRS // 20 and all(line["status"] == "ok" for line in lines)
    assert len(list(out.glob("*.png"))) == PAIRS // 20
