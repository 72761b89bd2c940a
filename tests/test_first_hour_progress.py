"""Issue 16, points 1 and 8: progress when stderr goes to a log file, and a model folder save that fails.

Progress is checked on real `python -m unetcli` subprocesses with stderr redirected to a file (not a terminal, as
from a shell script); save failures in-process, with smp's save_pretrained made to fail by monkeypatch."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_TRAIN, cli, describe, json_lines, ok

from unetcli.checkpoint import load_model_folder, load_train_state, read_meta

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "UNETCLI_PROGRESS_SECONDS": "0.01"}
STEP_LINE = re.compile(r"^epoch (\d+)/(\d+), step (\d+)/(\d+), loss \d+\.\d{4}, \d+\.\d images/s, left: epoch \S+, run \S+$")


def unetcli(*args, tmp_path: Path, env: dict | None = None) -> tuple[int, str, str]:
    """`python -m unetcli ARGS` with stdout and stderr redirected to files; (exit code, stdout, stderr)."""
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        code = subprocess.run([sys.executable, "-m", "unetcli", *map(str, args)], env=env or ENV, stdout=stdout, stderr=stderr,
                              timeout=300, check=False).returncode
    return code, out.read_text(), err.read_text()


# ------------------------------------------------------------------------------------- progress in a log file


def test_a_redirected_train_shows_progress_before_the_first_epoch_ends(binary_data, tmp_path):
    run = tmp_path / "run"
    code, stdout, stderr = unetcli("train", binary_data, "-o", run, *TINY_TRAIN, tmp_path=tmp_path)
    assert code == 0, stderr
    lines = stderr.splitlines()
    assert lines[0] == f"reading data: {binary_data} (pairing, decoding and scanning every image)", stderr
    first_summary = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/2  loss"))
    steps = [STEP_LINE.match(line) for line in lines[:first_summary]]
    assert [m.group(3) for m in steps if m][:2] == ["1", "2"], stderr  # the first after one step, then at the pace set
    assert lines.index("epoch 1: validating 1 image") < lines.index("epoch 1: saving model-best/, model-last/") < first_summary
    assert any(line.startswith("epoch 2: saving ") for line in lines), stderr
    assert stdout == ""


def test_json_keeps_stdout_to_json_lines_and_the_first_progress_line_comes_early(binary_data, tmp_path):
    env = {**ENV, "UNETCLI_PROGRESS_SECONDS": "3600"}
    code, stdout, stderr = unetcli("train", binary_data, "-o", tmp_path / "run", *TINY_TRAIN, "--epochs", "1", "--json",
                                   tmp_path=tmp_path, env=env)
    assert code == 0, stderr
    assert [event["event"] for event in json_lines(stdout)] == ["epoch", "done"]
    steps = [line for line in stderr.splitlines() if STEP_LINE.match(line)]
    assert len(steps) == 1 and steps[0].startswith("epoch 1/1, step 1/4, "), stderr  # at once, then not for an hour
    assert "epoch 1: saving model-best/, model-last/" in stderr.splitlines()


def test_quiet_train_prints_nothing(binary_data, tmp_path):
    code, stdout, stderr = unetcli("train", binary_data, "-o", tmp_path / "run", *TINY_TRAIN, "--epochs", "1", "--quiet",
                                   tmp_path=tmp_path)
    assert (code, stdout, stderr) == (0, "", "")


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_predict_and_evaluate_show_progress_in_a_log(trained, tmp_path, command):
    target = ["-o", tmp_path / "out", "--json"] if command == "predict" else ["--json"]
    code, stdout, stderr = unetcli(command, trained.model, trained.data if command == "evaluate" else trained.data / "images",
                                   *target, tmp_path=tmp_path)
    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(f"{command}: ")]
    assert lines and all(re.fullmatch(rf"{command}: \d/6 images, \d+\.\d\d images/s, \S+ left", line) for line in lines), stderr
    assert lines[0].startswith(f"{command}: 1/6 images"), stderr
    json_lines(stdout)  # stdout holds JSON only


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_quiet_predict_and_evaluate_show_no_progress(trained, tmp_path, command):
    target = ["-o", tmp_path / "out"] if command == "predict" else []
    code, _, stderr = unetcli(command, trained.model, trained.data if command == "evaluate" else trained.data / "images",
                              *target, "--quiet", tmp_path=tmp_path)
    assert (code, stderr) == (0, "")


def test_a_bad_progress_interval_is_one_error_line(binary_data, tmp_path):
    code, _, stderr = unetcli("train", binary_data, "-o", tmp_path / "run", *TINY_TRAIN, tmp_path=tmp_path,
                              env={**ENV, "UNETCLI_PROGRESS_SECONDS": "soon"})
    assert code == 2 and stderr.startswith("error: UNETCLI_PROGRESS_SECONDS='soon'"), stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- failed saves


def digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        sha.update(path.name.encode() + path.read_bytes())
    return sha.hexdigest()


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("."))


@pytest.fixture
def failing_save(monkeypatch):
    """fail(folder, calls): smp's save_pretrained writes its files and then raises ImportError on the given calls
    (counted from 1) for temporary folders whose name holds `folder`; returns the folders model-last/ held
    (as digests) when a save of it failed."""
    import segmentation_models_pytorch as smp

    import unetcli.training

    monkeypatch.setattr(unetcli.training, "SAVE_RETRY_PAUSE", 0.0)
    real = smp.Unet.save_pretrained

    def fail(folder: str, calls: set[int]) -> list[str]:
        seen, held = [], []

        def save_pretrained(self, path, *args, **kwargs):
            real(self, path, *args, **kwargs)
            if folder in Path(path).name:
                seen.append(path)
                if len(seen) in calls:
                    last = Path(path).parent / "model-last"
                    held.append(digest(last) if last.is_dir() else "")
                    raise ImportError("No module named 'hub_extra' (injected by the test)")

        monkeypatch.setattr(smp.Unet, "save_pretrained", save_pretrained)
        return held

    return fail


def test_a_save_that_fails_once_is_retried_with_a_warning(binary_data, tmp_path, failing_save):
    run = tmp_path / "run"
    failing_save("model-last", {1})
    result = ok(cli("train", binary_data, "-o", run, *TINY_TRAIN))
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [("warning: saving model-last/ failed (ImportError: No module named 'hub_extra' (injected by the test)); "
                         "it worked at the second try")], describe(result)
    assert load_train_state(run / "model-last")["epoch"] == 2
    assert not leftovers(run)


def test_a_save_that_fails_twice_ends_the_run_and_resume_goes_on(binary_data, tmp_path, failing_save, monkeypatch):
    run = tmp_path / "run"
    held = failing_save("model-last", {2, 3})  # epoch 1 is saved; both tries of epoch 2 fail half-way
    result = cli("train", binary_data, "-o", run, *TINY_TRAIN)
    assert result.exit_code == 3 and "Traceback" not in result.output, describe(result)
    error = result.stderr.splitlines()[-1]
    assert error == (f"error: saving model-last/ failed twice (ImportError: No module named 'hub_extra' (injected by the test)); "
                     f"{run / 'model-last'} still holds epoch 1, unchanged; once the cause is fixed, resume with: "
                     f"unetcli train --resume {run}"), describe(result)
    assert len(held) == 2 and held[0] == held[1] == digest(run / "model-last")  # as before the failed tries
    assert read_meta(run / "model-last").epoch == 1 and load_train_state(run / "model-last")["epoch"] == 1
    load_model_folder(run / "model-last")
    assert not leftovers(run)  # no half-written .model-last.tmp-PID folder

    monkeypatch.undo()
    resumed = ok(cli("train", "--resume", run, "--json"))
    assert [e["epoch"] for e in json_lines(resumed.stdout) if e["event"] == "epoch"] == [2], describe(resumed)
    assert load_train_state(run / "model-last")["epoch"] == 2


@pytest.mark.slow  # builds and saves a resnet18 U-Net
def test_a_save_that_cannot_work_fails_before_the_first_step(binary_data, tmp_path, failing_save):
    run = tmp_path / "run"
    failing_save("model-best", {1, 2})  # the trial save before training, and its second try
    result = cli("train", binary_data, "-o", run, *TINY_TRAIN)
    assert result.exit_code == 3, describe(result)
    assert result.stderr.splitlines()[-1] == (
        "error: saving model-best/ (a trial save before training) failed twice (ImportError: No module named 'hub_extra' "
        f"(injected by the test)); nothing was trained yet; once the cause is fixed, train again (add --overwrite to reuse {run})")
    assert sorted(p.name for p in run.iterdir()) == ["run.yaml"]  # no epoch ran, nothing half-written is left
