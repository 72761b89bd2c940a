"""Training users can trust: Ctrl-C, SIGTERM and SIGKILL mid-run, resume refusals, torchrun, --time-limit
and --patience. Signals go to real `python -m unetcli train` subprocesses on tiny data; what follows (info,
resume) runs in-process to save the ~8 s of imports per subprocess."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli, describe, json_lines, ok, user_error

from unetcli.checkpoint import TRAIN_STATE_FILE, load_model_folder, load_train_state, read_meta

TINY = ("--encoder", "resnet18", "--crop", "64", "--samples-per-epoch", "16", "--batch-size", "4", "--seed", "0", "--no-plan")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200", "TERMINAL_WIDTH": "200"}


def history(run: Path) -> list[dict]:
    """history.csv's rows (it is replaced atomically, so reading it while training runs is safe)."""
    if not (run / "history.csv").is_file():
        return []
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def epochs_in(run: Path) -> list[int]:
    return [int(row["epoch"]) for row in history(run)]


def leftovers(run: Path) -> list[str]:
    """Temporary or moved-aside model folders of an unfinished save."""
    return sorted(p.name for p in run.iterdir() if re.fullmatch(r"\.model-(best|last)\.(tmp|old)-\d+", p.name))


def start_training(data: Path, run: Path, log: Path) -> subprocess.Popen:
    """`unetcli train` with 30 tiny epochs (half a second each): still running when the signal comes."""
    with open(log, "w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "unetcli", "train", str(data), "-o", str(run), *TINY, "--epochs", "30"],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def wait_until(condition, process: subprocess.Popen, log: Path, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"training ended (exit code {process.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} after {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.05)


def stop(process: subprocess.Popen, sig: int, timeout: float = 60.0) -> int:
    try:
        process.send_signal(sig)
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------ SIGINT, SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_model_last_and_resume_completes(binary_data, tmp_path, sig):
    run, log = tmp_path / "run", tmp_path / "stderr.txt"
    process = start_training(binary_data, run, log)
    wait_until(lambda: len(history(run)) >= 1, process, log, "history.csv row")
    first_row = history(run)[0]
    assert stop(process, sig) == 130, log.read_text()

    stderr = log.read_text()
    assert "Traceback" not in stderr, stderr
    hints = [line for line in stderr.splitlines() if "--resume" in line]
    assert len(hints) == 1 and f"unetcli train --resume {run}" in hints[0] and sig.name in hints[0], stderr
    ok(cli("info", run / "model-last"))
    load_model_folder(run / "model-last")
    done = load_train_state(run / "model-last")["epoch"]
    assert 1 <= done < 30
    before = history(run)
    assert epochs_in(run) == list(range(1, done + 1)) and before[0] == first_row

    result = ok(cli("train", "--resume", run, "--epochs", done + 1, "--json"))
    assert [e["epoch"] for e in json_lines(result.stdout) if e["event"] == "epoch"] == [done + 1], describe(result)
    assert epochs_in(run) == list(range(1, done + 2))
    assert history(run)[:done] == before  # the rows written before the interruption are kept as they were
    assert read_meta(run / "model-last").epoch == done + 1
    assert not leftovers(run)


# ---------------------------------------------------------------------------------------------- SIGKILL


def test_sigkill_keeps_the_last_completed_epoch(binary_data, tmp_path):
    run, log = tmp_path / "run", tmp_path / "stderr.txt"
    process = start_training(binary_data, run, log)
    wait_until(lambda: (run / "model-last" / TRAIN_STATE_FILE).is_file(), process, log, "model-last/")
    assert stop(process, signal.SIGKILL) == -signal.SIGKILL

    # only the two model folders are visible; a save cut short leaves at most hidden .model-*.tmp/old-PID folders
    assert {p.name for p in run.iterdir() if p.is_dir() and not p.name.startswith(".")} <= {"model-best", "model-last"}
    # killed between a save's two renames, model-last/ sits in .model-last.old-PID until resume restores it
    last = run / "model-last" if (run / "model-last").is_dir() else next(run.glob(".model-last.old-*"))
    done = load_train_state(last)["epoch"]
    assert 1 <= done < 30
    assert epochs_in(run) in (list(range(1, done + 1)), list(range(1, done)))  # killed before history.csv was written

    result = ok(cli("train", "--resume", run, "--epochs", done + 1, "--json"))
    assert [e["epoch"] for e in json_lines(result.stdout) if e["event"] == "epoch"] == [done + 1], describe(result)
    assert epochs_in(run) == list(range(1, done + 2))
    assert not leftovers(run)
    load_model_folder(run / "model-best")


def test_resume_repairs_a_save_killed_between_its_renames(binary_data, tmp_path):
    """The state SIGKILL leaves in the worst moment: model-last/ renamed aside, the new one half-written."""
    run = tmp_path / "run"
    ok(cli("train", binary_data, "-o", run, *TINY, "--epochs", "1", "--quiet"))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    (run / "model-last").rename(run / f".model-last.old-{gone.pid}")
    (run / f".model-last.tmp-{gone.pid}").mkdir()
    (run / f".model-last.tmp-{gone.pid}" / "config.json").write_text("{")
    (run / f".model-best.tmp-{gone.pid}").mkdir()

    ok(cli("train", "--resume", run, "--epochs", "2", "--quiet"))
    assert epochs_in(run) == [1, 2]
    assert read_meta(run / "model-last").epoch == 2
    assert not leftovers(run)


# ------------------------------------------------------------------------------------- resume refusals


@pytest.mark.parametrize("what", ["empty folder", "missing folder", "model folder"])
def test_resume_with_nothing_to_resume_fails_loudly(trained, tmp_path, what):
    run = {"empty folder": tmp_path, "missing folder": tmp_path / "nope", "model folder": trained.run / "model-best"}[what]
    user_error(cli("train", "--resume", run, "--epochs", "3"), 2, "nothing to resume", str(run))


def test_resume_refuses_a_changed_encoder_and_mask_mode(trained):
    line = user_error(cli("train", "--resume", trained.run, "--encoder", "resnet34", "--mask-mode", "index"), 2,
                      "--encoder resnet34 (the run has resnet18)", "--mask-mode index (the run has auto)", "new run")
    assert "--epochs" not in line.split("only")[0]  # allowed changes are not reported as refused


# ---------------------------------------------------------------------------------- --time-limit, --patience


def done_event(result) -> dict:
    return next(e for e in json_lines(result.stdout) if e["event"] == "done")


def test_time_limit_stops_between_epochs_with_a_clean_save(binary_data, tmp_path):
    from unetcli.options import parse_duration

    assert parse_duration("20s") == 20 and parse_duration("1h30m") == 5400
    run = tmp_path / "run"
    # No wall-clock bound on the test itself (it only measured how loaded the machine was): the program's own
    # clock decides, and "time limit" as the reason with fewer than the 1000 epochs asked for shows it did.
    result = ok(cli("train", binary_data, "-o", run, *TINY, "--epochs", "1000", "--time-limit", "4s", "--json"))
    assert done_event(result)["reason"] == "time limit", describe(result)
    epochs = epochs_in(run)
    assert 1 <= len(epochs) < 1000 and epochs == list(range(1, len(epochs) + 1))
    assert read_meta(run / "model-last").epoch == epochs[-1]
    load_model_folder(run / "model-best")
    load_train_state(run / "model-last")


def test_time_limit_cuts_an_epoch_longer_than_the_limit(binary_data, tmp_path):
    """One epoch of 4000 crops (1000 steps of 4) takes a minute or more here: it ends early, is validated and
    saved. That it ended early is read from the saved step count, not from a wall clock."""
    run = tmp_path / "run"
    result = ok(cli("train", binary_data, "-o", run, *TINY, "--samples-per-epoch", "4000", "--epochs", "3",
                    "--time-limit", "3s", "--json"))
    assert done_event(result)["reason"] == "time limit", describe(result)
    assert epochs_in(run) == [1]
    assert 1 <= load_train_state(run / "model-last")["step"] < 1000  # the epoch was cut short
    assert read_meta(run / "model-last").epoch == 1
    load_model_folder(run / "model-best")


def test_time_limit_warm_up_starts_at_the_first_step(binary_data, tmp_path, monkeypatch):
    """The learning rate follows the clock under --time-limit; its warm-up (the first 3 %) must count from the
    first step, not from the command's start: here reading the data and planning "took" 100 s of 1000 (the
    clock is started 100 s early), and the first step must still run at a warm-up rate, not near the peak."""
    from unetcli import training
    from unetcli.session import Clock

    monkeypatch.setattr(training, "Clock", lambda start, *args, **kwargs: Clock(start - 100, *args, **kwargs))
    run = tmp_path / "run"
    ok(cli("train", binary_data, "-o", run, *TINY, "--samples-per-epoch", "4", "--epochs", "2", "--lr", "1e-3",
           "--time-limit", "1000s", "--json"))
    first_step_lr = float(history(run)[0]["lr"])  # epoch 1 is one step of 4 crops
    assert first_step_lr < 0.5e-3, f"the first step ran at {first_step_lr:g}: the warm-up was spent before it"


def test_patience_stops_early_with_a_clean_save(binary_data, tmp_path):
    """--min-delta 1: no Dice can improve by 1, so only epoch 1 is best and patience 2 stops after epoch 3."""
    run = tmp_path / "run"
    result = ok(cli("train", binary_data, "-o", run, *TINY, "--epochs", "30", "--patience", "2", "--min-delta", "1", "--json"))
    done = done_event(result)
    assert (done["reason"], done["best_epoch"]) == ("early stop", 1), describe(result)
    assert epochs_in(run) == [1, 2, 3]
    assert read_meta(run / "model-best").epoch == 1
    assert read_meta(run / "model-last").epoch == 3 and load_train_state(run / "model-last")["epoch"] == 3
    load_model_folder(run / "model-best")


# ---------------------------------------------------------------------------------------------- torchrun

NETWORK_TROUBLE = ("RendezvousConnectionError", "RendezvousTimeoutError", "DistNetworkError", "Address family not supported",
                   "Cannot assign requested address", "Connection refused", "Network is unreachable", "ifname")


def torchrun(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 --standalone -m unetcli ARGS` on the CPU (gloo over the loopback interface)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "unetcli", *args]
    env = {**ENV, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 and any(text in done.stderr for text in NETWORK_TROUBLE):
        pytest.skip("torchrun cannot start 2 processes here (no usable local network): " + done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, f"exit code {done.returncode}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
    return done


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_resume_and_predict(binary_data, tmp_path):
    run = tmp_path / "run"
    first = torchrun("train", str(binary_data), "-o", str(run), *TINY, "--epochs", "2", "--device", "cpu")
    for line in ("epoch 1/2 ", "epoch 2/2 ", "done (completed)", "mask values -> classes"):
        assert sum(line in text for text in first.stderr.splitlines()) == 1, f"{line!r} not once:\n{first.stderr}"
    assert epochs_in(run) == [1, 2]
    assert not leftovers(run)
    load_model_folder(run / "model-best")
    assert load_train_state(run / "model-last")["epoch"] == 2

    # --time-limit: every step asks rank 0 whether time is up; a rank that asked alone would hang
    resumed = torchrun("train", "--resume", str(run), "--epochs", "3", "--time-limit", "10m", "--device", "cpu")
    assert sum("epoch 3/3 " in line for line in resumed.stderr.splitlines()) == 1, resumed.stderr
    assert epochs_in(run) == [1, 2, 3]
    assert read_meta(run / "model-last").epoch == 3

    out = tmp_path / "predicted"
    predicted = torchrun("predict", str(run), str(binary_data / "images"), "-o", str(out), "--json")
    results = json_lines(predicted.stdout)
    inputs = sorted(p.name for p in (binary_data / "images").iterdir())
    assert sorted(Path(r["input"]).name for r in results) == inputs, predicted.stdout  # each image by one rank only
    assert all(r["status"] == "ok" for r in results), predicted.stdout
    shares = sorted(re.findall(r"^rank (\d) of 2: (\d+) predicted", predicted.stderr, re.MULTILINE))
    assert [rank for rank, _ in shares] == ["0", "1"] and sum(int(n) for _, n in shares) == len(inputs), predicted.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(name).stem + ".png" for name in inputs)


def test_resume_keeps_the_decoder_the_run_began_with(binary_data, tmp_path, monkeypatch):
    """A run begun by an earlier unetcli, whose 128-wide decoder ended with 8 channels, resumes with that decoder."""
    import unetcli.model

    run = tmp_path / "run"
    monkeypatch.setattr(unetcli.model, "decoder_channels", lambda width: tuple(width >> i for i in range(5)))
    ok(cli("train", binary_data, "-o", run, *TINY, "--decoder-width", "128", "--epochs", "1", "--quiet"))
    monkeypatch.undo()
    assert unetcli.model.decoder_channels(128)[-1] == 16
    ok(cli("train", "--resume", run, "--epochs", "2", "--quiet"))
    assert epochs_in(run) == [1, 2]
    config = json.loads((run / "model-last" / "config.json").read_text())
    assert config["decoder_channels"] == [128, 64, 32, 16, 8]
