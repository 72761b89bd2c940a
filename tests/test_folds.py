"""Cross-validation and ensembles (issue 14): `train --folds K` makes RUN/fold-1..K and RUN/ensemble.json, and RUN
predicts, evaluates and exports as one model whose probabilities are the mean of the folds'."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN, cli, json_lines, ok, read_values, user_error, write_binary_dataset

import unetcli
from unetcli.data import Pair, split_pairs
from unetcli.ensemble import EnsembleNet
from unetcli.images import read_image


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run): six tiny binary pairs, trained as two folds through the CLI."""
    root = tmp_path_factory.mktemp("folds")
    data = write_binary_dataset(root / "data", count=6)
    ok(cli("train", data, "-o", root / "run", "--folds", "2", *TINY_TRAIN, "--quiet"))
    return data, root / "run"


# ------------------------------------------------------------------------------------------ the split, the network


def pairs(n: int) -> list[Pair]:
    return [Pair(f"p{i}", Path(f"i/p{i}.png"), Path(f"m/p{i}.png")) for i in range(n)]


@pytest.mark.parametrize("n, k", [(7, 3), (6, 2), (5, 5)])
def test_the_folds_validation_sets_partition_the_pairs(n, k):
    splits = [split_pairs(pairs(n), 0.2, seed=1, fold=f, folds=k) for f in range(1, k + 1)]
    vals = [set(val) for _, val in splits]
    assert set().union(*vals) == set(pairs(n)) and sum(len(v) for v in vals) == n  # each pair validated once
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    for train, val in splits:
        assert set(train) | set(val) == set(pairs(n)) and not set(train) & set(val)
    assert splits == [split_pairs(pairs(n), 0.2, seed=1, fold=f, folds=k) for f in range(1, k + 1)]  # deterministic
    assert split_pairs(pairs(n), 0.2, seed=1) == split_pairs(pairs(n), 0.2, seed=1, fold=0, folds=1)  # no fold: as before


@pytest.mark.parametrize("binary", [True, False])
def test_the_ensemble_network_returns_logits_of_the_mean_probability(binary):
    torch.manual_seed(0)
    channels = 1 if binary else 3
    members = [torch.nn.Conv2d(2, channels, 3, padding=1) for _ in range(3)]
    temperatures, scales, shifts = [1.0, 2.0, 0.5], torch.rand(3, 2, 1, 1) + 0.5, torch.randn(3, 2, 1, 1)
    net = EnsembleNet(members, binary=binary, temperatures=temperatures, scales=scales, shifts=shifts)
    x = torch.randn(2, 2, 8, 8) * 10  # large logits: no infinities from confident members
    with torch.no_grad():
        logits = [m(x * scales[k] + shifts[k]) / temperatures[k] for k, m in enumerate(members)]
        out = net(x)
    if binary:
        expected = torch.stack([torch.sigmoid(z) for z in logits]).mean(0)
        got = torch.sigmoid(out)
    else:
        expected = torch.stack([torch.softmax(z, 1) for z in logits]).mean(0)
        got = torch.softmax(out, 1)
    assert torch.isfinite(out).all()
    assert torch.allclose(got, expected, atol=1e-6)


# ------------------------------------------------------------------------------------------ train --folds


def test_folds_make_fold_runs_and_a_cross_validated_summary(cv_run):
    _, run = cv_run
    description = json.loads((run / "ensemble.json").read_text())
    assert description["members"] == ["fold-1/model-best", "fold-2/model-best"]
    cv = description["cross_validation"]
    assert cv["folds"] == 2 and len(cv["per_fold"]) == 2
    scores = [fold["score"] for fold in cv["per_fold"]]
    assert cv["mean"]["score"] == pytest.approx(np.mean(scores), abs=1e-6)
    assert cv["sd"]["score"] == pytest.approx(np.std(scores, ddof=1), abs=1e-6)
    assert "dice_foreground" in cv["mean"] and "dice_foreground" in cv["sd"]
    val_pairs = []
    for k in (1, 2):
        meta = json.loads((run / f"fold-{k}" / "model-best" / "unetcli.json").read_text())
        assert meta["training"]["fold"] == k and meta["training"]["folds"] == 2
        val_pairs.append(meta["data"]["val_pairs"])
    assert sum(val_pairs) == 6  # every pair validated by exactly one fold
    assert "folds: 2" in (run / "run.yaml").read_text()


def test_the_run_folder_predicts_as_the_mean_of_its_folds(cv_run):
    data, run = cv_run
    image = read_image(data / "images" / "sample_0.png")
    ensemble = unetcli.load(run, precision="fp32").probabilities(image)
    folds = [unetcli.load(run / f"fold-{k}", precision="fp32").probabilities(image) for k in (1, 2)]
    assert np.abs(ensemble - (folds[0] + folds[1]) / 2).max() <= 2 / 65535  # the 16-bit steps of the three maps
    assert np.abs(folds[0] - folds[1]).max() > 0.01  # the folds differ: the mean is not trivially either


def test_predict_evaluate_info_and_export_take_the_run_folder(cv_run, tmp_path):
    data, run = cv_run
    ok(cli("predict", run, data / "images", "-o", tmp_path / "pred", "--tta", "--quiet"))
    assert len(list((tmp_path / "pred").glob("*.png"))) == 6
    summary = json_lines(ok(cli("evaluate", run, data, "--json")).stdout)[-1]
    assert summary["images"] == 6
    assert "fold-1/model-best" in ok(cli("info", run, "--json")).stdout
    ok(cli("export", run, "--format", "folder", "-o", tmp_path / "shared"))
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["ensemble.json", "fold-1", "fold-2"]
    ok(cli("predict", tmp_path / "shared", data / "images" / "sample_1.png", "-o", tmp_path / "again", "--quiet"))
    ok(cli("predict", run, data / "images" / "sample_1.png", "-o", tmp_path / "first", "--quiet"))
    assert np.array_equal(read_values(tmp_path / "again" / "sample_1.png"), read_values(tmp_path / "first" / "sample_1.png"))


def test_folds_that_do_not_agree_are_refused_in_one_line(cv_run, tmp_path):
    data, run = cv_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta_file = copy / "fold-2" / "model-best" / "unetcli.json"
    meta = json.loads(meta_file.read_text())
    meta["threshold"] = 0.3
    meta_file.write_text(json.dumps(meta))
    user_error(cli("predict", copy, data / "images" / "sample_0.png", "-o", tmp_path / "out"), 4, "fold-2/model-best", "threshold")


@pytest.mark.parametrize("flags, code, fragment", [
    (["--folds", "0"], 2, "--folds 0"),
    (["--folds", "7"], 2, "only 6 pairs"),
    (["--folds", "2", "--val", "."], 2, "--folds and --val"),
    (["--folds", "2", "--fold", "3"], 2, "--fold 3"),
])
def test_bad_folds_are_refused_before_training(tmp_path, flags, code, fragment):
    data = write_binary_dataset(tmp_path / "data", count=6)
    user_error(cli("train", data, "-o", tmp_path / "run", *flags, *TINY_TRAIN), code, fragment)
    assert not (tmp_path / "run" / "fold-1").exists()


def test_calibrating_an_ensemble_writes_a_new_ensemble_folder(cv_run, tmp_path):
    data, run = cv_run
    before = (run / "ensemble.json").read_text()
    ok(cli("calibrate", run, data, "-o", tmp_path / "calibrated"))
    assert (run / "ensemble.json").read_text() == before  # the given folder is never changed
    description = json.loads((tmp_path / "calibrated" / "ensemble.json").read_text())
    assert description["members"] == ["fold-1", "fold-2"] and description["temperature"] != 1.0
    assert not (tmp_path / "calibrated" / "fold-1" / "train_state.pt").exists()
    ok(cli("predict", tmp_path / "calibrated", data / "images" / "sample_0.png", "-o", tmp_path / "out", "--quiet"))


def test_the_python_api_trains_folds_as_the_cli_does(tmp_path):
    """unetcli.train(folds=K) announces fold 1 of K (and would go on through every fold), not a single run."""
    from unetcli.folds import FoldStarted

    data = write_binary_dataset(tmp_path / "data")
    events = unetcli.train(data, out=tmp_path / "run", folds=3, plan=False, epochs=1)
    first = next(events)
    assert isinstance(first, FoldStarted) and (first.fold, first.folds) == (1, 3)
    assert first.run_dir == tmp_path / "run" / "fold-1"
    events.close()
