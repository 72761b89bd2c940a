"""train -> predict -> evaluate through the CLI on a tiny generated binary dataset (0/255 masks)."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import yaml
from helpers import (
    TINY_TRAIN,
    cli,
    describe,
    json_lines,
    ok,
    read_values,
    unique_values,
    user_error,
    write_binary_dataset,
    write_image,
)

# ------------------------------------------------------------------------------------------------ train


def test_train_writes_the_run_folder(trained):
    run = trained.run
    for name in ("config.json", "model.safetensors", "unetcli.json"):
        assert (run / "model-best" / name).is_file(), name
        assert (run / "model-last" / name).is_file(), name
    assert (run / "model-last" / "train_state.pt").is_file()
    assert not (run / "model-best" / "train_state.pt").exists()  # only model-last is resumable
    assert not list(run.glob(".*tmp*")), "temporary folders left behind"
    assert read_values(run / "curves.png").ndim == 3  # design 3: the training curves, drawn as an image

    with open(run / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for column in ("train_loss", "val_loss", "dice_background", "dice_foreground"):
        assert all(r[column] != "" for r in rows), column

    options = yaml.safe_load((run / "run.yaml").read_text())
    assert options["encoder"] == "resnet18" and options["crop"] == 64 and options["epochs"] == 2

    meta = json.loads((run / "model-best" / "unetcli.json").read_text())
    assert meta["format_version"] == 2
    assert meta["in_channels"] == 1
    assert meta["classes"]["mode"] == "binary"
    assert [c["value"] for c in meta["classes"]["classes"]] == [0, 255]
    assert meta["epoch"] in (1, 2)


def test_train_prints_the_value_to_class_table(trained):
    assert "mask values -> classes (binary)" in trained.output
    assert "foreground" in trained.output and "255" in trained.output
    assert "done (completed)" in trained.output


def test_train_state_is_loadable_with_weights_only(trained):
    from unetcli.checkpoint import load_train_state

    state = load_train_state(trained.run / "model-last")
    assert state["epoch"] == 2
    assert len(state["history"]) == 2
    assert "optimizer" in state


def test_train_json_reports_each_epoch(binary_data, tmp_path):
    result = ok(cli("train", binary_data, "-o", tmp_path / "run", "--encoder", "resnet18", "--crop", "32",
                    "--epochs", "1", "--samples-per-epoch", "4", "--batch-size", "4", "--no-plan", "--json"))
    events = json_lines(result.stdout)
    assert [e["event"] for e in events] == ["epoch", "done"]
    assert events[0]["epoch"] == 1 and len(events[0]["dice"]) == 2
    assert events[1]["best_epoch"] == 1 and events[1]["reason"] == "completed"


def test_train_refuses_a_non_empty_run_folder(trained, binary_data):
    user_error(cli("train", binary_data, "-o", trained.run, "--encoder", "resnet18", "--epochs", "1"), 2,
               "already exists")


# ---------------------------------------------------------------------------------------------- predict


def test_predict_folder_writes_masks_in_the_users_values(trained, tmp_path):
    out = tmp_path / "pred"
    result = ok(cli("predict", trained.run, trained.data / "images", "-o", out, "--json"))
    records = json_lines(result.stdout)
    assert len(records) == len(trained.images)  # one JSON line per input
    assert {r["input"] for r in records} == {str(p) for p in trained.images}
    for record in records:
        assert record["status"] == "ok"
        mask = read_values(record["outputs"]["mask"])
        assert mask.shape == (80, 96)  # the input's own size, not the padded one
        assert mask.dtype == np.uint8
    assert unique_values(out.iterdir()) <= {0, 255}
    assert "6 predicted, 0 skipped, 0 failed" in result.stderr


def test_predict_writes_the_users_foreground_value(trained, tmp_path):
    # a threshold just above 0 makes every pixel foreground: written as the user's 255, not class id 1
    ok(cli("predict", trained.model, trained.images[0], "-o", tmp_path, "--threshold", "1e-30"))
    assert unique_values([tmp_path / trained.images[0].name]) == {255}


def test_predict_refuses_a_threshold_outside_0_1(trained, tmp_path):
    user_error(cli("predict", trained.model, trained.images[0], "-o", tmp_path, "--threshold", "1.5"), 2,
               "--threshold")


def test_predict_binary_zero_one_masks_write_one(tmp_path):
    data = write_binary_dataset(tmp_path / "data", count=4, size=(64, 64), foreground=1)
    ok(cli("train", data, "-o", tmp_path / "run", *TINY_TRAIN))
    meta = json.loads((tmp_path / "run" / "model-best" / "unetcli.json").read_text())
    assert [c["value"] for c in meta["classes"]["classes"]] == [0, 1]
    ok(cli("predict", tmp_path / "run", data / "images", "-o", tmp_path / "all-fg", "--threshold", "1e-30"))
    assert unique_values((tmp_path / "all-fg").iterdir()) == {1}


def test_predict_odd_sizes_and_channels(trained, tmp_path):
    """Any size goes through whole (padded and cropped back); RGB input to a gray model is converted."""
    rng = np.random.default_rng(1)
    odd = write_image(tmp_path / "in" / "odd.png", rng.integers(0, 255, (37, 141), np.uint8))
    colour = write_image(tmp_path / "in" / "colour.png", rng.integers(0, 255, (64, 50, 3), np.uint8))
    out = tmp_path / "out"
    ok(cli("predict", trained.model, odd, colour, "-o", out, "--save", "mask,color,overlay"))
    assert read_values(out / "odd.png").shape == (37, 141)
    assert read_values(out / "colour.png").shape == (64, 50)
    assert read_values(out / "odd_color.png").shape == (37, 141, 3)
    assert read_values(out / "colour_overlay.png").shape == (64, 50, 3)
    assert unique_values([out / "odd_color.png"]) <= {(0, 0, 0), (255, 0, 255)}  # the display colours: black, magenta


def test_predict_large_image_in_overlapping_tiles(trained, tmp_path):
    image = write_image(tmp_path / "in" / "big.png", np.random.default_rng(2).integers(0, 255, (150, 173), np.uint8))
    ok(cli("predict", trained.model, image, "-o", tmp_path / "tiled", "--tile", "64", "--overlap", "0.25"))
    tiled = read_values(tmp_path / "tiled" / "big.png")
    assert tiled.shape == (150, 173)
    assert set(np.unique(tiled)) <= {0, 255}


def test_predict_failing_input_gives_exit_5_and_writes_the_rest(trained, tmp_path):
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"this is not a PNG")
    missing = tmp_path / "in" / "missing.png"
    good = trained.images[:3]
    out = tmp_path / "out"
    result = cli("predict", trained.model, good[0], broken, good[1], missing, good[2], "-o", out, "--json")
    assert result.exit_code == 5, describe(result)
    assert "Traceback" not in result.output
    records = {r["input"]: r for r in json_lines(result.stdout)}
    assert len(records) == 5
    for path in good:
        assert records[str(path)]["status"] == "ok"
        assert (out / path.name).is_file()
    for bad in (broken, missing):
        assert records[str(bad)]["status"] == "error"
        assert str(bad) in records[str(bad)]["error"]
        assert not (out / bad.name).exists()
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 2
    assert "3 predicted, 0 skipped, 2 failed" in result.stderr


def test_predict_when_every_input_fails_exits_with_their_code(trained, tmp_path):
    result = cli("predict", trained.model, tmp_path / "missing.png", "-o", tmp_path / "out")
    assert result.exit_code == 3, describe(result)  # bad input data, not "some inputs failed"
    assert "Traceback" not in result.output
    expected = (f"error: {tmp_path / 'missing.png'}: cannot read the file (No such file or directory); "
                "check that it exists and is readable")
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [expected]
    assert "0 predicted, 0 skipped, 1 failed" in result.stderr


def test_predict_skip_existing(trained, tmp_path):
    out = tmp_path / "out"
    ok(cli("predict", trained.model, trained.data / "images", "-o", out))
    kept = out / trained.images[0].name
    before = kept.stat().st_mtime_ns
    os.utime(kept, ns=(before - 10**9, before - 10**9))  # so a rewrite would show
    (out / trained.images[1].name).unlink()
    result = ok(cli("predict", trained.model, trained.data / "images", "-o", out, "--skip-existing", "--json"))
    status = {r["input"]: r["status"] for r in json_lines(result.stdout)}
    assert status.pop(str(trained.images[1])) == "ok"
    assert set(status.values()) == {"skipped"}
    assert kept.stat().st_mtime_ns == before - 10**9
    assert (out / trained.images[1].name).is_file()
    assert "1 predicted, 5 skipped, 0 failed" in result.stderr


def test_predict_refuses_to_overwrite_an_input(trained, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(trained.data / "images", folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    user_error(cli("predict", trained.model, folder, "-o", folder), 3, "overwrite an input")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_predict_refuses_two_inputs_with_one_output_name(trained, tmp_path):
    other = tmp_path / "other" / trained.images[0].name
    other.parent.mkdir()
    shutil.copy(trained.images[0], other)
    user_error(cli("predict", trained.model, trained.images[0], other, "-o", tmp_path / "out"), 2,
               "would both write")


def test_predict_paths_from_stdin(trained, tmp_path):
    chosen = trained.images[1:3]
    result = ok(cli("predict", trained.model, "-", "-o", tmp_path / "out", "--json",
                    input="\n".join(str(p) for p in chosen) + "\n\n"))
    assert [r["input"] for r in json_lines(result.stdout)] == [str(p) for p in chosen]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in chosen)


def test_predict_at_list_file(trained, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# some images\n{trained.images[0]}\n\n{trained.images[4]}\n")
    result = ok(cli("predict", trained.model, f"@{listing}", "-o", tmp_path / "out", "--json"))
    assert [r["input"] for r in json_lines(result.stdout)] == [str(trained.images[0]), str(trained.images[4])]


def test_predict_glob(trained, tmp_path):
    pattern = str(trained.data / "images" / "sample_[0-2].png")
    result = ok(cli("predict", trained.model, pattern, "-o", tmp_path / "out", "--json"))
    assert [r["input"] for r in json_lines(result.stdout)] == [str(p) for p in trained.images[:3]]
    user_error(cli("predict", trained.model, str(trained.data / "images" / "*.tif"), "-o", tmp_path / "o2"), 2,
               "matches no files")


def test_predict_shard(trained, tmp_path):
    result = ok(cli("predict", trained.model, trained.data / "images", "-o", tmp_path, "--shard", "2/3", "--json"))
    assert [r["input"] for r in json_lines(result.stdout)] == [str(p) for p in trained.images[1::3]]


# --------------------------------------------------------------------------------------------- evaluate


def test_evaluate_model_writes_per_image_csv_and_summary(trained, tmp_path):
    per_image, summary_file = tmp_path / "per_image.csv", tmp_path / "summary.json"
    result = ok(cli("evaluate", trained.model, trained.data, "--per-image", per_image, "--summary", summary_file,
                    "--json"))
    summary = json.loads(result.stdout)
    assert json.loads(summary_file.read_text()) == summary
    assert summary["images"] == 6
    assert set(summary["classes"]) == {"background", "foreground"}
    matrix = np.array(summary["confusion_matrix"])
    assert matrix.sum() == 6 * 80 * 96
    fg = summary["classes"]["foreground"]
    assert (fg["tp"], fg["fp"], fg["fn"]) == (matrix[1, 1], matrix[0, 1], matrix[1, 0])
    assert fg["tp"] + fg["fp"] + fg["fn"] + fg["tn"] == matrix.sum()
    assert fg["dice"] == pytest.approx(2 * fg["tp"] / (2 * fg["tp"] + fg["fp"] + fg["fn"]), abs=1e-6)
    assert summary["pixel_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-6)

    with open(per_image, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["image"] for r in rows) == [p.stem for p in trained.images]
    for key in ("tp", "fp", "fn", "tn"):
        assert sum(int(r[f"{key}_foreground"]) for r in rows) == fg[key]


def test_evaluate_model_matches_scoring_its_predictions(trained, tmp_path):
    """evaluate MODEL DATA scores exactly what predict writes (one pipeline, one predictor)."""
    out = tmp_path / "pred"
    ok(cli("predict", trained.model, trained.data / "images", "-o", out, "--batch-size", "1",
           "--save", "mask,color,overlay"))
    by_model = json.loads(ok(cli("evaluate", trained.model, trained.data, "--json")).stdout)
    by_files = json.loads(ok(cli("evaluate", "--pred", out, "--gt", trained.data / "masks", "--json")).stdout)
    assert by_files["images"] == 6  # colour and overlay files are not taken for predictions
    assert by_files["confusion_matrix"] == by_model["confusion_matrix"]


def test_evaluate_prints_a_table(trained):
    result = ok(cli("evaluate", trained.model, trained.data))
    assert "6 images" in result.stdout
    assert "foreground" in result.stdout and "dice" in result.stdout


# ------------------------------------------------------------------------------------- resume, interrupt


def test_resume_continues_exactly(binary_data, tmp_path):
    """Stopping after epoch 1 of 2 and resuming gives the very weights of an uninterrupted run. On the CPU:
    GPU kernels (cuDNN's backward, atomics) are not bitwise reproducible even between two straight runs."""
    from safetensors.torch import load_file

    from unetcli.options import TrainOptions
    from unetcli.training import EpochDone, train

    args = ("--encoder", "resnet18", "--crop", "32", "--samples-per-epoch", "8", "--batch-size", "4", "--seed", "0", "--device", "cpu")
    ok(cli("train", binary_data, "-o", tmp_path / "straight", *args, "--epochs", "2", "--quiet"))
    options = TrainOptions(out=tmp_path / "cut", data=binary_data, encoder="resnet18", crop=32, samples_per_epoch=8,
                           batch_size=4, seed=0, epochs=2, device="cpu")
    events = train(options)
    next(e for e in events if isinstance(e, EpochDone))
    events.close()  # stopped after epoch 1: model-last/ holds its state
    assert json.loads((tmp_path / "cut" / "model-last" / "unetcli.json").read_text())["epoch"] == 1

    user_error(cli("train", "--resume", tmp_path / "cut", "--crop", "64"), 2, "--crop 64")
    ok(cli("train", "--resume", tmp_path / "cut", "--quiet"))
    straight = load_file(str(tmp_path / "straight" / "model-last" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "model-last" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all((straight[k] == resumed[k]).all() for k in straight)
    with open(tmp_path / "cut" / "history.csv", newline="") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]



def test_train_compile_falls_back_to_eager_when_compiling_fails(binary_data, tmp_path, monkeypatch):
    import torch

    class Uncompilable(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.inner = module

        def forward(self, *args, **kwargs):
            raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", Uncompilable)
    result = ok(cli("train", binary_data, "-o", tmp_path / "run", *TINY_TRAIN, "--epochs", "1", "--compile"))
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: --compile failed")]
    assert len(warnings) == 1 and "no C++ compiler found" in warnings[0], describe(result)
    assert (tmp_path / "run" / "model-last" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------ --save probs


@pytest.mark.parametrize("tile", ["off", "64"])
def test_save_probs_writes_16_bit_foreground_probabilities_that_agree_with_the_mask(trained, tmp_path, tile):
    """Binary model: `<stem>_probs.png`, 16-bit, value / 65535 = P(foreground); thresholded at --threshold it
    gives the mask, whole (`--tile off`) and through the overlap-tile path (`--tile 64` on 80x96 images)."""
    out = tmp_path / "out"
    result = ok(cli("predict", trained.model, *trained.images, "-o", out, "--save", "mask,probs", "--tile", tile,
                    "--threshold", "0.4", "--json"))
    records = json_lines(result.stdout)
    assert [set(r["outputs"]) for r in records] == [{"mask", "probs"}] * len(trained.images)
    spread = []
    for image in trained.images:
        probs, mask = read_values(out / f"{image.stem}_probs.png"), read_values(out / f"{image.stem}.png")
        assert probs.dtype == np.uint16 and probs.shape == mask.shape == (80, 96)
        differ = (probs / 65535 > 0.4) != (mask == 255)
        assert np.all(np.abs(probs[differ] / 65535 - 0.4) <= 1 / 65535)  # only pixels the 16-bit rounding moved
        spread.append(len(np.unique(probs)))
    assert min(spread) > 100  # graded probabilities, not a second mask
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i.stem}{s}.png" for i in trained.images for s in ("", "_probs"))
    again = ok(cli("predict", trained.model, *trained.images, "-o", out, "--save", "mask,probs", "--skip-existing", "--json"))
    assert {r["status"] for r in json_lines(again.stdout)} == {"skipped"}


def test_an_input_named_like_another_inputs_output_is_refused(trained, tmp_path):
    """a.png's probabilities would be a_probs.png, which is also the mask of an input called a_probs.png."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(trained.images[0], folder / "a.png")
    shutil.copy(trained.images[1], folder / "a_probs.png")
    user_error(cli("predict", trained.model, folder, "-o", tmp_path / "out", "--save", "mask,probs"), 2,
               "would both write a_probs.png")
    ok(cli("predict", trained.model, folder, "-o", tmp_path / "out", "--quiet"))  # masks alone do not collide
