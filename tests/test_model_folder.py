"""The model folder: a faithful round trip, loadable by smp itself, and damaged folders refused (exit 4)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import cli, describe, ok, read_values, user_error


@pytest.fixture(scope="module")
def torch():
    import torch

    return torch


def input_batch(torch, channels: int = 1, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, 64, 96, generator=generator)


@pytest.fixture
def model_copy(trained, tmp_path):
    """A copy of the trained model-best/ that a test may damage."""
    return shutil.copytree(trained.model, tmp_path / "model")


# ----------------------------------------------------------------------------------------------- round trip


def test_save_load_round_trip_is_exact(trained, tmp_path, torch):
    import dataclasses

    from unetcli.checkpoint import load_model_folder, read_meta, save_model_folder
    from unetcli.masks import ClassMap
    from unetcli.model import build_model

    torch.manual_seed(3)
    model = build_model("resnet18", in_channels=1, out_channels=3)
    model.train()
    with torch.no_grad():
        model(input_batch(torch, seed=1))  # moves BatchNorm running statistics off their defaults
    model.eval()
    # three logits: a three-class table (loading refuses a table that does not fit the network)
    classes = ClassMap.from_dict({"mode": "index", "ignore_value": None, "palette": None,
                                  "classes": [{"id": i, "name": f"c{i}", "value": i, "colour": [i, i, i]} for i in range(3)]})
    meta = dataclasses.replace(read_meta(trained.model), classes=classes)
    assert meta.out_channels == 3
    save_model_folder(tmp_path / "saved", model, meta)
    loaded = load_model_folder(tmp_path / "saved")

    x = input_batch(torch)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert not loaded.model.training
    saved = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert saved == ["config.json", "model.safetensors", "unetcli.json"]


def test_loaded_model_reproduces_the_written_predictions(trained, tmp_path):
    """Predictor.from_folder(model-best) gives exactly the masks `unetcli predict` wrote."""
    from unetcli.images import read_image
    from unetcli.predictor import Predictor

    ok(cli("predict", trained.model, trained.data / "images", "-o", tmp_path, "--batch-size", "1"))
    predictor = Predictor.from_folder(trained.model)
    for image_path in trained.images:
        ids = predictor.predict_image(read_image(image_path), image_path)
        np.testing.assert_array_equal(predictor.class_map.encode(ids), read_values(tmp_path / image_path.name))


def test_weights_are_the_plain_models(trained, torch):
    from safetensors.torch import load_file

    from unetcli.model import build_model

    weights = load_file(str(trained.model / "model.safetensors"))
    reference = build_model("resnet18", in_channels=1, out_channels=1).state_dict()
    assert set(weights) == set(reference)  # no "module." or "_orig_mod." prefixes
    assert all(weights[k].shape == reference[k].shape for k in reference)


def test_smp_from_pretrained_loads_the_folder_offline(trained, torch, monkeypatch):
    import segmentation_models_pytorch as smp

    from unetcli.checkpoint import load_model_folder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    by_smp = smp.from_pretrained(str(trained.model)).eval()
    ours = load_model_folder(trained.model).model
    assert type(by_smp).__name__ == "Unet"
    x = input_batch(torch)
    with torch.no_grad():
        theirs, mine = by_smp(x), ours(x)
    assert theirs.shape == (2, 1, 64, 96)
    torch.testing.assert_close(theirs, mine, rtol=0, atol=1e-6)


def test_info_describes_the_model(trained):
    result = ok(cli("info", trained.run))  # a run folder stands for its model-best/
    assert "Unet, encoder resnet18, 1 input channel(s)" in result.stdout
    assert "mask values -> classes (binary)" in result.stdout
    assert "eval pipeline: Normalize -> PadIfNeeded" in result.stdout
    meta = json.loads(ok(cli("info", trained.model, "--json")).stdout)
    assert meta == json.loads((trained.model / "unetcli.json").read_text())


# ------------------------------------------------------------------------------------------ damaged folders


def rewrite_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def predict_fails(model, trained, tmp_path, *fragments) -> None:
    out = tmp_path / "out"
    user_error(cli("predict", model, trained.images[0], "-o", out), 4, *fragments)
    assert not (out / trained.images[0].name).exists()


@pytest.mark.parametrize("missing", ["model.safetensors", "config.json", "unetcli.json"])
def test_missing_file(model_copy, trained, tmp_path, missing):
    (model_copy / missing).unlink()
    predict_fails(model_copy, trained, tmp_path, f"missing {missing}")
    user_error(cli("info", model_copy), 4, f"missing {missing}")


def test_wrong_format_version(model_copy, trained, tmp_path):
    rewrite_json(model_copy / "unetcli.json", lambda meta: meta.update(format_version=99))
    predict_fails(model_copy, trained, tmp_path, "format version 99")
    user_error(cli("info", model_copy), 4, "format version 99")
    user_error(cli("evaluate", model_copy, trained.data), 4, "format version 99")


def test_unknown_architecture(model_copy, trained, tmp_path):
    rewrite_json(model_copy / "config.json", lambda config: config.update(_model_class="NoSuchNet"))
    line = user_error(cli("predict", model_copy, trained.images[0], "-o", tmp_path / "out"), 4,
                      "unknown architecture 'NoSuchNet'")
    assert "Unet" in line  # the valid choices are listed
    user_error(cli("evaluate", model_copy, trained.data), 4, "NoSuchNet")
    user_error(cli("info", model_copy), 4, "unknown architecture 'NoSuchNet'")


def test_unknown_encoder(model_copy, trained, tmp_path):
    rewrite_json(model_copy / "config.json", lambda config: config.update(encoder_name="resnet9000"))
    predict_fails(model_copy, trained, tmp_path, "unknown encoder 'resnet9000'")
    user_error(cli("info", model_copy, "--json"), 4, "unknown encoder 'resnet9000'")


def test_weights_that_do_not_fit_the_config(model_copy, trained, tmp_path):
    rewrite_json(model_copy / "config.json", lambda config: config.update(classes=3))
    predict_fails(model_copy, trained, tmp_path, "weights do not fit config.json")


def test_corrupt_weights(model_copy, trained, tmp_path):
    (model_copy / "model.safetensors").write_bytes(b"\x00" * 64)
    predict_fails(model_copy, trained, tmp_path, "cannot read the weights")


def test_corrupt_description(model_copy, trained, tmp_path):
    (model_copy / "unetcli.json").write_text("{ not json")
    predict_fails(model_copy, trained, tmp_path, "not valid JSON")
    user_error(cli("info", model_copy), 4, "not valid JSON")


def test_not_a_model_folder(trained, tmp_path):
    user_error(cli("info", tmp_path / "nothing-here"), 4, "not a model folder")
    user_error(cli("info", trained.data), 4, "missing")
    result = cli("predict", tmp_path / "nothing-here", trained.images[0], "-o", tmp_path / "out")
    assert result.exit_code == 4, describe(result)
