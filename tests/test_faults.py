"""Faults from outside, in real processes (`python -m unetcli`): predict killed with SIGKILL mid-batch and
rerun, two shards writing one folder at once, a training data file that disappears. Conditions are polled with
a timeout, never slept on."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from helpers import cli, describe, json_lines, ok, user_error, write_image

from unetcli.images import read_image, read_mask

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}


def unetcli(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "unetcli", *map(str, args)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (exit {process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


def dead_pid() -> int:
    """The id of a process that has certainly ended (we started and reaped it)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def many_inputs(trained, folder: Path, count: int, scale: int = 1) -> list[Path]:
    """`count` copies of the training images under new names (tiled `scale` x `scale` to make each slower)."""
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        image = read_image(trained.images[i % len(trained.images)])[:, :, 0]
        paths.append(write_image(folder / f"in_{i:03d}.png", np.tile(image, (scale, scale))))
    return paths


def assert_complete(out: Path, inputs: list[Path]) -> None:
    """Every input has exactly its one mask, each a whole, decodable PNG in the model's values; nothing else."""
    assert sorted(os.listdir(out)) == sorted(p.name for p in inputs)
    for path in inputs:
        raw = read_mask(out / path.name)
        assert raw.values.shape == read_image(path).shape[:2]
        assert set(np.unique(raw.values)) <= {0, 255}


# ------------------------------------------------------------------------------------------ (a) SIGKILL


def test_predict_killed_mid_batch_then_rerun_with_skip_existing(trained, tmp_path):
    inputs = many_inputs(trained, tmp_path / "in", 40, scale=2)
    out = tmp_path / "out"
    process = unetcli("predict", trained.model, tmp_path / "in", "-o", out, "--batch-size", "1", "--quiet")
    try:
        wait_for(lambda: out.is_dir() and any(p.suffix == ".png" and not p.name.startswith(".") for p in out.iterdir()),
                 240, "the first output", process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL
    done = [name for name in os.listdir(out) if not name.startswith(".")]
    assert 0 < len(done) < len(inputs), "the kill came too late to test anything"
    for name in done:  # outputs are renamed into place whole: a killed run leaves no half-written mask
        assert read_mask(out / name).values.shape == (160, 192)
    # what SIGKILL leaves when it strikes during a write: a temporary file named after the dead process
    stale = out / f".in_039.png.{dead_pid()}.tmp"
    stale.write_bytes(b"\x89PNG half")

    result = ok(cli("predict", trained.model, tmp_path / "in", "-o", out, "--skip-existing", "--json", "--quiet"))
    statuses = {Path(r["input"]).name: r["status"] for r in json_lines(result.stdout)}
    assert statuses == {p.name: "skipped" if p.name in done else "ok" for p in inputs}
    assert_complete(out, inputs)
    assert temp_files(out) == []


# -------------------------------------------------------------------------------------- (b) two shards


def test_two_shards_into_one_folder_at_once(trained, tmp_path):
    inputs = many_inputs(trained, tmp_path / "in", 24)
    damaged = tmp_path / "in" / "in_007.png"  # shard 2/2 takes the odd positions; its pixel data is corrupt
    data = bytearray(damaged.read_bytes())
    data[data.find(b"IDAT") + 12] ^= 0xFF
    damaged.write_bytes(bytes(data))
    out = tmp_path / "out"
    shards = [unetcli("predict", trained.model, tmp_path / "in", "-o", out, "--shard", f"{k}/2", "--json", "--quiet")
              for k in (1, 2)]
    try:
        results = [shard.communicate(timeout=300) for shard in shards]
    finally:
        for shard in shards:
            shard.kill()
    (out1, err1), (out2, err2) = results
    assert shards[0].returncode == 0, err1
    assert err1 == ""
    assert shards[1].returncode == 5, err2  # one input failed, the others were written
    assert err2.splitlines() == [(f"error: {damaged}: not an image that can be decoded (truncated, corrupt or not an "
                                  "image at all); re-export it as PNG or TIFF")]  # and no 'libpng error' line
    records = json_lines(out1) + json_lines(out2)
    assert sorted(r["input"] for r in records) == sorted(map(str, inputs))  # each input in exactly one shard
    assert sum(r["status"] == "error" for r in records) == 1
    good = [p for p in inputs if p != damaged]
    assert_complete(out, good)
    assert temp_files(out) == []


# --------------------------------------------------------------------------- (c) data vanishing in training


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_training_data_file_vanishes_mid_run(trained, tmp_path):
    """Training decodes its data once, so a file deleted mid-run does not disturb it; the resumed run, which
    reads the folder again, names the missing file (exit 3) and leaves model-last/ as it was."""
    data = shutil.copytree(trained.data, tmp_path / "data")
    run = tmp_path / "run"
    process = unetcli("train", data, "-o", run, "--encoder", "resnet18", "--crop", "32", "--samples-per-epoch", "8",
                      "--batch-size", "4", "--epochs", "4", "--no-plan", "--json")
    try:
        wait_for(lambda: (run / "model-last" / "unetcli.json").exists(), 240, "model-last/", process)
        (data / "images" / "sample_3.png").unlink()
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert json.loads(stdout.splitlines()[-1])["event"] == "done"
    last = run / "model-last"
    before = digest(last)

    user_error(cli("train", "--resume", run, "--epochs", "6", "--quiet"), 3, "1 mask(s) without an image", "sample_3.png")
    assert digest(last) == before
    info = json.loads(ok(cli("info", last, "--json")).stdout)
    assert info["epoch"] == 4
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_training_data_file_vanishes_between_pairing_and_reading(trained, tmp_path, monkeypatch):
    """The file goes after the folders were listed but before it is read: a DataError naming it, no run folder."""
    import unetcli.session

    data = shutil.copytree(trained.data, tmp_path / "data")
    victim = data / "images" / "sample_2.png"
    real_find_pairs = unetcli.session.find_pairs

    def find_pairs_then_lose_a_file(*folders):
        pairs = real_find_pairs(*folders)
        victim.unlink()
        return pairs

    monkeypatch.setattr(unetcli.session, "find_pairs", find_pairs_then_lose_a_file)
    run = tmp_path / "run"
    result = cli("train", data, "-o", run, "--encoder", "resnet18", "--epochs", "1", "--val-split", "0")
    user_error(result, 3, f"{victim}: cannot read the file (No such file or directory)")
    assert not run.exists(), describe(result)
