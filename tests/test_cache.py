"""train --cache auto|ram|disk|none: the same run whichever store the pairs are read from, the disk cache reused
by --resume without reading an image, and auto's choice under a memory limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_TRAIN, cli, ok, user_error, write_binary_dataset, write_image
from safetensors.numpy import load_file

from unetcli import cache, scan
from unetcli.data import find_pairs, resolve_layout
from unetcli.masks import ClassMap
from unetcli.scan import scan_dataset


def _train(data: Path, run: Path, *extra) -> str:
    return ok(cli("train", data, "-o", run, *TINY_TRAIN, *extra)).stderr


def _weights(run: Path) -> dict:
    return load_file(str(run / "model-last" / "model.safetensors"))


@pytest.mark.slow
def test_every_cache_trains_the_same_run(tmp_path):
    data = write_binary_dataset(tmp_path / "data", count=8)
    lines = {kind: _train(data, tmp_path / kind, "--cache", kind) for kind in ("ram", "none", "disk")}
    assert "data cache: ram: the decoded pairs held in memory" in lines["ram"]
    assert "data cache: none: streaming" in lines["none"]
    assert "data cache: disk:" in lines["disk"]
    histories = {kind: (tmp_path / kind / "history.csv").read_text().splitlines() for kind in lines}
    losses = {kind: [row.split(",")[1:3] for row in rows[1:]] for kind, rows in histories.items()}
    assert losses["none"] == losses["ram"] and losses["disk"] == losses["ram"]  # same seed, same crops, same values
    reference = _weights(tmp_path / "ram")
    for kind in ("none", "disk"):
        weights = _weights(tmp_path / kind)
        assert all(np.array_equal(weights[name], reference[name]) for name in reference), kind
    arrays = sorted(p.name for p in (tmp_path / "disk" / "cache" / "train").iterdir())
    assert "index.json" in arrays and "000000-image.npy" in arrays and "000000-mask.npy" in arrays


@pytest.mark.slow
def test_resume_reuses_the_disk_cache_without_reading_images(tmp_path, monkeypatch):
    data = write_binary_dataset(tmp_path / "data", count=6)
    run = tmp_path / "run"
    _train(data, run, "--cache", "disk", "--epochs", "1")
    folder = run / "cache" / "train"
    written = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def no_reading(pair):
        raise AssertionError(f"{pair.image} was decoded again")

    monkeypatch.setattr(scan, "read_sample", no_reading)
    monkeypatch.setattr(cache, "read_sample", no_reading)
    stderr = ok(cli("train", "--resume", run, "--epochs", "2")).stderr
    assert "reused from an earlier run" in stderr
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == written
    assert len((run / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs


@pytest.mark.slow
def test_auto_streams_when_memory_is_short(tmp_path, monkeypatch):
    data = write_binary_dataset(tmp_path / "data", count=6)
    assert "data cache: ram (auto:" in _train(data, tmp_path / "roomy", "--epochs", "1")
    monkeypatch.setenv("UNETCLI_MEMORY_LIMIT", "64K")
    line = next(line for line in _train(data, tmp_path / "short", "--epochs", "1").splitlines() if "data cache" in line)
    assert line.startswith("data cache: none (auto:") and "exceed 50% of 64.0 KB available memory" in line, line


def test_memory_limit_and_cache_values_are_checked(tmp_path, monkeypatch):
    assert cache.parse_bytes("2G") == 2 * 2**30 and cache.parse_bytes("1.5M") == 3 * 2**19 and cache.parse_bytes("100") == 100
    monkeypatch.setenv("UNETCLI_MEMORY_LIMIT", "1M")
    assert cache.keep_budget("auto") == 2**19 and cache.keep_budget("none") == 0 and cache.keep_budget("ram") == float("inf")
    monkeypatch.setenv("UNETCLI_MEMORY_LIMIT", "lots")
    data = write_binary_dataset(tmp_path / "data", count=4)
    user_error(cli("train", data, "-o", tmp_path / "run", *TINY_TRAIN), 2, "UNETCLI_MEMORY_LIMIT='lots'")
    monkeypatch.delenv("UNETCLI_MEMORY_LIMIT")
    user_error(cli("train", data, "-o", tmp_path / "run", *TINY_TRAIN, "--cache", "ssd"), 2, "--cache 'ssd'")


def test_streaming_scan_keeps_nothing_and_counts_like_decoding(tmp_path):
    """Class pixels come from each mask's value counts; they must equal decoding every mask."""
    rng = np.random.default_rng(0)
    for i in range(5):
        write_image(tmp_path / "images" / f"{i}.png", rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
        write_image(tmp_path / "masks" / f"{i}.png", rng.choice(np.array([0, 1, 2], np.uint8), (40, 50)))
    pairs = find_pairs(*resolve_layout(tmp_path))
    streamed = scan_dataset(pairs)
    kept = scan_dataset(pairs, keep_bytes=float("inf"))
    assert not streamed.kept and kept.kept
    assert all(s.image is None for s in streamed.samples) and all(s.image is not None for s in kept.samples)
    decoded = sum(np.bincount(s.mask.ravel(), minlength=3) for s in kept.samples)
    assert streamed.class_pixels == kept.class_pixels == [int(c) for c in decoded[:3]]
    assert streamed.mean == kept.mean and streamed.std == kept.std


def test_streaming_store_holds_a_bounded_number_of_pairs(tmp_path):
    data = write_binary_dataset(tmp_path / "data", count=6, size=(64, 64))
    pairs = find_pairs(*resolve_layout(data))
    class_map = ClassMap.from_dict(scan_dataset(pairs).class_map.to_dict())
    store = cache.StreamStore(pairs, class_map, 1, budget=3 * 64 * 64 * 2)  # room for three pairs
    for i in range(6):
        assert store[i].mask.shape == (64, 64)
    assert len(store.recent) == 3 and list(store.recent) == [3, 4, 5]
    assert [s.image.shape for s in store] == [(64, 64, 1)] * 6
