"""Prediction at any size: odd image sizes through `unetcli predict`, tiled against whole-image prediction
(a synthetic mosaic; the membrane one is in test_membrane.py), and `--compile`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import agreement, check_tiled_against_whole, cli, mosaic, ok, predict_one, predict_with_probs, read_values, write_image

from unetcli.demo import make_sample
from unetcli.images import read_image

# width x height, as image sizes are usually written: camera frames, a 4:3 photo, odd and tiny ones
ODD_SIZES = [(347, 260), (1388, 1040), (480, 360), (1, 1), (33, 31)]


# ---------------------------------------------------------------------------------------------- odd sizes


@pytest.mark.parametrize("tile", ["off", "64", "auto"])
def test_odd_sizes_come_back_at_their_exact_size_in_the_mask_values(trained, tmp_path, tile):
    """Any size, no user action: whole images (padded to the stride and cropped back), 64-pixel tiles, and the
    model's own default (1024-pixel tiles: the 1388x1040 frame is tiled, the others are predicted whole).
    The 1388x1040 frame is left out of the 64-pixel case: cut into 64-pixel tiles every 32 pixels it alone was
    about 1400 forward passes (15 s of fp32 time on 2 cores), and its size already goes through the tiled
    path in 'auto' and whole in 'off'."""
    rng = np.random.default_rng(3)
    sizes = [size for size in ODD_SIZES if not (tile == "64" and size == (1388, 1040))]
    inputs = []
    for width, height in sizes:
        image, _ = make_sample(rng, height, width)
        inputs.append(write_image(tmp_path / "in" / f"odd_{width}x{height}.png", image))
    ok(cli("predict", trained.model, *inputs, "-o", tmp_path / "out", "--tile", tile, "--quiet"))
    for (width, height), path in zip(sizes, inputs):
        mask = read_values(tmp_path / "out" / path.name)
        assert mask.shape == (height, width), path.name
        assert set(np.unique(mask).tolist()) <= {0, 255}, path.name


# -------------------------------------------------------------------------------------- tiled == whole


@pytest.fixture(scope="module")
def confident(binary_data, tmp_path_factory) -> Path:
    """A model trained longer than the session's `trained` one. Two epochs leave logits near zero (and
    BatchNorm statistics half-way from their start), so any change of context flips pixels; agreement
    between tiled and whole prediction is a property of a model that has learnt something.

    Trained in fp32 (`--precision fp32`) so that CPUs with and without native bf16 train the same way, and
    `model-last/` (after all ten epochs), not `model-best/`: the best validation Dice on one held-out image
    picks an arbitrary epoch, and on an AVX2-only CPU (seed 0) it picked epoch 5 of 10, a half-trained model
    that agreed on only 99.72 % of the mosaic below (the test then failed). With model-last: see the numbers
    in test_tiled_and_whole_prediction_agree. Not planned (`--no-plan`, with the decoder, augmentation and
    learning rate the planner gave it when those numbers were measured): a planner change once changed this
    model (a higher learning rate) and it agreed on 99.89 %."""
    run = tmp_path_factory.mktemp("confident") / "run"
    ok(cli("train", binary_data, "-o", run, "--encoder", "resnet18", "--crop", "64", "--epochs", "10",
           "--samples-per-epoch", "64", "--batch-size", "8", "--seed", "0", "--precision", "fp32", "--no-plan",
           "--decoder-width", "128", "--augment", "light", "--lr", "1e-3", "--quiet"))
    return run / "model-last"


def test_tiled_and_whole_prediction_agree(confident, binary_data, tmp_path):
    """A 1024x1024 mosaic of the training images: 512-pixel tiles (default overlap: origins 0, 256, 512 on
    each axis) against the whole image, both fp32 so that only tiling differs. (The 2048x2048 and membrane
    comparisons are in bench_predict.py.)

    Two parts. Deterministic: where every covering tile holds a pixel's whole receptive field (four corner
    blocks, 19 % of the image), tiled and whole probabilities are equal up to one 16-bit step (measured: logits
    within 5e-7 there); any difference in what a tile is fed or where it is put back fails this exactly.
    Statistical: near the seams a tile sees less context, so pixels close to the threshold may flip. Measured
    over the whole image for 34 models trained as `confident` is (seeds 0-13 on AVX-512 and on AVX2 =
    ONEDNN_MAX_CPU_ISA=AVX2, one thread; seeds 0-2 on both with two threads): 99.913-99.986 %, only one
    below 99.95 %; the test's seed 0 gave 99.968-99.972 % in every setting (also trained in bf16), a third
    of the disagreement the 99.9 % bound allows. The exact part held for all 34. Broken tiling measured on
    the seed-0 model: the centre tile read 1 px off 99.80 %, 4 px off 99.45 %, 32 px off 97.0 %; uniform
    instead of Gaussian blending 99.76 %; the inner tiles 8 px off the 32-pixel grid 99.95 % (which only
    test_properties.py's grid checks catch)."""
    images = [read_image(p) for p in sorted((binary_data / "images").iterdir())]
    path = write_image(tmp_path / "mosaic.png", mosaic(images, 1024, 1024)[:, :, 0])
    whole = predict_with_probs(confident, path, tmp_path / "whole", "--tile", "off", "--precision", "fp32")
    tiled = predict_with_probs(confident, path, tmp_path / "tiled", "--tile", "512", "--precision", "fp32")
    default = predict_one(confident, path, tmp_path / "auto", "--precision", "fp32")  # auto: 1024 tiles, so whole
    assert whole[0].shape == (1024, 1024) and 0.05 < np.mean(whole[0] == 255) < 0.95  # not trivially uniform
    np.testing.assert_array_equal(default, whole[0])
    assert check_tiled_against_whole(whole, tiled, 512) >= 0.999


# ------------------------------------------------------------------------------------------------ --compile


def test_compile_failure_falls_back_to_eager_with_one_warning(trained, tmp_path, monkeypatch):
    import torch

    def broken_compile(model, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nmore detail")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    image = trained.images[0]
    eager = predict_one(trained.model, image, tmp_path / "eager")
    result = ok(cli("predict", trained.model, image, "-o", tmp_path / "compiled", "--compile"))
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--compile failed" in warnings[0] and "no working C++ compiler" in warnings[0], result.stderr
    np.testing.assert_array_equal(read_values(tmp_path / "compiled" / f"{image.stem}.png"), eager)


@pytest.mark.slow  # torch.compile on CPU: about 75 s here with a cold inductor cache
def test_compile_gives_the_same_masks(confident, binary_data, tmp_path):
    """Default precision (bf16 autocast where the CPU has it): compiled kernels may round differently."""
    image = min((binary_data / "images").iterdir())
    eager = predict_one(confident, image, tmp_path / "eager")
    result = ok(cli("predict", confident, image, "-o", tmp_path / "compiled", "--compile"))
    assert "--compile failed" not in result.stderr, result.stderr
    assert agreement(read_values(tmp_path / "compiled" / f"{image.stem}.png"), eager) >= 0.995


# ---------------------------------------------------------------------------------------------- batching


def test_batch_size_auto_and_explicit(confident, binary_data, tmp_path):
    """Auto batches a quarter megapixel per forward pass on CPU; an explicit --batch-size is kept within the
    2 MP memory bound; and batching does not change predictions (fp32: >= 99.99 % equal on this CPU; 99.97 % on an
    H200, whose kernels differ by batch size)."""
    from unetcli.predictor import Predictor

    auto = Predictor.from_folder(confident, device="cpu")
    assert [auto.images_per_forward(s, s) for s in (512, 256, 128, 64, 2048)] == [1, 4, 8, 8, 1]
    four = Predictor.from_folder(confident, device="cpu", batch_size=4)
    assert [four.images_per_forward(s, s) for s in (512, 1024, 2048)] == [4, 2, 1]
    outputs = {}
    for batch in ("0", "1", "3"):
        ok(cli("predict", confident, binary_data / "images", "-o", tmp_path / batch, "--batch-size", batch,
               "--precision", "fp32", "--quiet"))
        outputs[batch] = {p.name: read_values(p) for p in sorted((tmp_path / batch).iterdir())}
    assert len(outputs["0"]) == len(list((binary_data / "images").iterdir()))
    for name, mask in outputs["0"].items():
        assert agreement(outputs["1"][name], mask) >= 0.999 and agreement(outputs["3"][name], mask) >= 0.999


# ------------------------------------------------------------------------------------ BatchNorm folding


def _with_random_statistics(model):
    import torch

    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # trained-looking statistics, so folding has work to do
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return model.eval()


@pytest.mark.parametrize("encoder", ["resnet18", "efficientnet-b0"])
def test_folding_batchnorms_keeps_the_outputs(encoder):
    """Folding only changes float rounding, which grows with the outputs (up to about 100 for these random
    statistics): max |folded - original| / max |original| was at most 5.4e-6 on AVX-512 and 2.0e-5 on AVX2
    (ONEDNN_MAX_CPU_ISA=AVX2) over seeds 0-39, and 4.1e-6 / 7.6e-6 for the seed used here. The tolerance is
    1e-4 of the largest output (the plain 1e-4 it was before failed on AVX2 for some inputs: the input was
    not seeded); a wrong fold is off by the order of the outputs themselves."""
    import torch

    from unetcli.model import build_model, fold_batchnorms

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _with_random_statistics(build_model(encoder, 1, 2))
        x = torch.randn(2, 1, 96, 64)
    folded = fold_batchnorms(model, x[:1, :, :64, :64])
    assert folded is not model
    called = []
    for module in list(folded.modules()) + list(model.modules()):
        if isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_pre_hook(lambda bn, _: called.append(bn))
    with torch.inference_mode():
        actual = folded(x)
        assert called == []  # (efficientnet's unused head BatchNorm stays, never called)
        expected = model(x)
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * max(1.0, expected.abs().max().item()))
    assert len(called) > 10  # the original is untouched


@pytest.mark.parametrize("encoder", ["resnet18", "efficientnet-b0"])
def test_weights_cast_once_give_the_same_bf16_outputs_as_autocast(encoder):
    import copy

    import torch

    from unetcli.model import build_model, cast_weights

    model = _with_random_statistics(build_model(encoder, 1, 2)).eval()
    cast = cast_weights(copy.deepcopy(model), torch.bfloat16)
    conv, batchnorm = torch.nn.Conv2d, torch.nn.BatchNorm2d
    dtypes = {kind: {p.dtype for m in cast.modules() if isinstance(m, kind) for p in m.parameters()} for kind in (conv, batchnorm)}
    assert dtypes == {conv: {torch.bfloat16}, batchnorm: {torch.float32}}
    x = torch.randn(2, 1, 96, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(cast(x), model(x))


def test_folding_refuses_a_convolution_whose_output_is_used_twice():
    import torch

    from unetcli.model import fold_batchnorms

    class Residual(torch.nn.Module):  # bn(conv(x)) + conv(x): folding the bn into the conv would change both terms
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = _with_random_statistics(Residual())
    assert fold_batchnorms(model, torch.randn(1, 3, 16, 16)) is model


def test_precision_layouts(monkeypatch):
    """channels_last wherever it pays: bf16/fp16 everywhere, and fp32 on CPU (1.5x for inference there);
    fp32 on GPUs keeps the default layout. UNETCLI_PRECISION decides what auto means for a whole run."""
    import torch

    from unetcli.runtime import cpu_has_native_bf16, pick_precision

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert pick_precision("fp32", cpu).channels_last and pick_precision("bf16", cpu).channels_last
    assert not pick_precision("fp32", gpu).channels_last and pick_precision("fp16", gpu).channels_last
    monkeypatch.delenv("UNETCLI_PRECISION", raising=False)
    auto = pick_precision("auto", cpu)
    assert auto.name == ("bf16" if cpu_has_native_bf16() else "fp32") and auto.channels_last
    monkeypatch.setenv("UNETCLI_PRECISION", "fp32")
    assert pick_precision("auto", cpu).name == "fp32" and pick_precision("bf16", cpu).name == "bf16"
