"""The network (smp.Unet with its nearest-neighbour decoder), its loss, and inference-time weight preparation."""

from __future__ import annotations

import warnings

import segmentation_models_pytorch as smp
import torch

from .errors import UnetcliError, UsageError

LOSS_PARTS = ("dice", "ce", "focal")


def check_encoder(encoder: str) -> str:
    """An smp encoder name, or UsageError with similar names."""
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        close = [n for n in names if encoder.split("-")[0][:6] in n][:8] or names[:8]
        raise UsageError(f"unknown encoder {encoder!r}; for example: {', '.join(close)} (see smp's encoder list)")
    return encoder


def loss_parts(kind: str) -> list[str]:
    """'dice+ce' -> ['dice', 'ce']; UsageError for parts that are not dice, ce or focal."""
    parts = kind.replace(" ", "").split("+")
    unknown = set(parts) - set(LOSS_PARTS)
    if unknown or not parts:
        raise UsageError(f"--loss {kind!r}: unknown part(s) {', '.join(sorted(unknown))}; combine dice, ce, focal with +")
    return parts


MIN_DECODER_CHANNELS = 16


def decoder_channels(width: int) -> tuple[int, ...]:
    """The five decoder blocks' widths: `width` halved at each block, no fewer than 16 (256 -> smp's default
    256..16; 128 -> 128, 64, 32, 16, 16). The floor: with 8 channels at full resolution a resnet18 U-Net lost the
    2-4 px wide class of the RGB benchmark in some seeds; with 16 it kept it in all (docs/decisions.md, planner)."""
    if width < 32 or width % 16:
        raise UsageError(f"--decoder-width {width}: use a multiple of 16, at least 32 (e.g. 64, 128, 256)")
    return tuple(max(MIN_DECODER_CHANNELS, width >> i) for i in range(5))


def build_model(encoder: str, in_channels: int, out_channels: int, encoder_weights: str | None = None, *,
                decoder_width: int = 256, decoder: tuple[int, ...] | None = None) -> torch.nn.Module:
    """smp.Unet whose decoder upsamples by nearest-neighbour resize + convolution (no transposed convs);
    `decoder`: the blocks' widths as stored in a model folder, else from `decoder_width`."""
    check_encoder(encoder)
    decoder = tuple(decoder) if decoder else decoder_channels(decoder_width)
    weights = None if encoder_weights in (None, "none", "None") else encoder_weights
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return smp.Unet(
                encoder_name=encoder,
                encoder_weights=weights,
                in_channels=in_channels,
                classes=out_channels,
                decoder_channels=decoder,
                decoder_interpolation="nearest",
            )
    except Exception as err:  # smp/timm/urllib raise many kinds when a download fails
        if weights is None:
            raise
        raise UnetcliError(
            f"could not get {weights!r} weights for encoder {encoder!r} ({type(err).__name__}: {err}); "
            "this needs network access to the weights' host, or use --encoder-weights none"
        ) from None


def output_channels(num_classes: int, binary: bool) -> int:
    """Binary tasks use one sigmoid logit; multi-class tasks one softmax logit per class."""
    return 1 if binary else num_classes


class SegmentationLoss(torch.nn.Module):
    """Dice + cross-entropy (BCE for binary tasks) by default; any of dice, ce, focal joined by '+'.

    Dice and focal are smp.losses'. The cross-entropy term is written out because it takes a per-pixel
    weight map (the U-Net paper's border weights) and class weights; ignored pixels count nowhere.
    """

    def __init__(self, binary: bool, ignore_index: int, kind: str = "dice+ce", class_weights: list[float] | None = None):
        super().__init__()
        parts = loss_parts(kind)
        mode = smp.losses.BINARY_MODE if binary else smp.losses.MULTICLASS_MODE
        self.binary, self.ignore_index, self.use_ce = binary, ignore_index, "ce" in parts
        self.smp_terms = torch.nn.ModuleList()
        if "dice" in parts:
            self.smp_terms.append(smp.losses.DiceLoss(mode, from_logits=True, ignore_index=ignore_index))
        if "focal" in parts:
            self.smp_terms.append(smp.losses.FocalLoss(mode, ignore_index=ignore_index))
        self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32) if class_weights else None)

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None) -> torch.Tensor:
        valid = target != self.ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        if self.binary:
            per_pixel = torch.nn.functional.binary_cross_entropy_with_logits(
                logits[:, 0], safe_target.float(), reduction="none")
            if self.class_weights is not None:
                per_pixel = per_pixel * self.class_weights[safe_target]
        else:
            per_pixel = torch.nn.functional.cross_entropy(logits, safe_target, weight=self.class_weights, reduction="none")
        if pixel_weights is not None:
            per_pixel = per_pixel * pixel_weights
        return (per_pixel * valid).sum() / valid.sum().clamp(min=1)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
        logits, target = logits.float(), target.long()
        total = self.cross_entropy(logits, target, pixel_weights) if self.use_ce else logits.new_zeros(())
        smp_target = target.unsqueeze(1) if self.binary else target
        for term in self.smp_terms:
            total = total + term(logits, smp_target)
        return total


_INVERTIBLE = (
    (lambda t: t.flip(3), lambda t: t.flip(3)),
    (lambda t: t.flip(2), lambda t: t.flip(2)),
    (lambda t: t.rot90(1, (2, 3)), lambda t: t.rot90(-1, (2, 3))),
    (lambda t: t.rot90(2, (2, 3)), lambda t: t.rot90(-2, (2, 3))),
    (lambda t: t.rot90(3, (2, 3)), lambda t: t.rot90(-3, (2, 3))),
)


def forward_with_consistency(model, x: torch.Tensor, binary: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits for x, and an invariance penalty: the prediction for a flipped/rotated x (one exactly invertible
    transform drawn per batch) should be the flipped/rotated prediction. Both go through one forward pass
    (square crops), which also keeps DistributedDataParallel to one forward per backward."""
    forward, inverse = _INVERTIBLE[int(torch.randint(0, len(_INVERTIBLE), ()).item())]
    both = model(torch.cat([x, forward(x)]))
    logits, other = both[: len(x)], inverse(both[len(x):])
    squash = torch.sigmoid if binary else (lambda t: t.softmax(1))
    penalty = torch.nn.functional.mse_loss(squash(other.float()), squash(logits.float()).detach())
    return logits, penalty


def auto_class_weights(class_pixels: list[int]) -> list[float]:
    """Inverse square-root frequency, scaled to mean 1 (classes with no pixels get weight 1)."""
    import math

    raw = [1 / math.sqrt(c) if c else 0.0 for c in class_pixels]
    present = [r for r in raw if r]
    mean = sum(present) / len(present)
    return [r / mean if r else 1.0 for r in raw]


def class_ids(logits: torch.Tensor, binary: bool, threshold: float = 0.5) -> torch.Tensor:
    """Logits (N, C, H, W) -> class ids (N, H, W)."""
    if binary:
        return (torch.sigmoid(logits[:, 0].float()) > threshold).to(torch.uint8)
    return logits.argmax(dim=1).to(torch.uint8)


def cast_weights(model: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """For inference under autocast: store convolution and linear weights in the autocast dtype once, instead
    of autocast casting them at every forward pass (about 3 % of a bf16 forward on CPU). The results are the
    same: autocast computes these layers from the same rounded weights. Other layers (a BatchNorm that could not
    be folded) keep float32 parameters, as under autocast. Changes `model` in place."""
    if dtype is not None:
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.to(dtype)
    return model


def fold_batchnorms(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """For inference: a copy of `model` in which every BatchNorm2d that directly normalises a Conv2d's output
    is folded into that convolution's weights and bias (and replaced by Identity), which saves a pass over
    every activation. The pairs are found by running `example` once; if the folded copy's output on it does
    not match the original (a convolution whose output is also used elsewhere), the original is returned."""
    import copy

    folded = copy.deepcopy(model).eval()
    outputs: list[tuple[torch.Tensor, torch.nn.Conv2d]] = []  # kept alive so that tensor identity is meaningful
    pairs: list[tuple[torch.nn.Conv2d | None, torch.nn.BatchNorm2d]] = []

    def producer(tensor: torch.Tensor) -> torch.nn.Conv2d | None:
        return next((conv for out, conv in reversed(outputs) if out is tensor), None)

    hooks = []
    for module in folded.modules():
        if isinstance(module, torch.nn.Conv2d):
            hooks.append(module.register_forward_hook(lambda conv, _, out: outputs.append((out, conv))))
        elif isinstance(module, torch.nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(lambda bn, inputs: pairs.append((producer(inputs[0]), bn))))
    with torch.inference_mode():
        expected = folded(example)
    for hook in hooks:
        hook.remove()

    convs = [conv for conv, _ in pairs]
    parent_of = {id(child): (parent, name) for parent in folded.modules() for name, child in parent.named_children()}
    for conv, bn in pairs:
        if conv is None or convs.count(conv) > 1 or not bn.track_running_stats or id(bn) not in parent_of:
            continue  # not a conv -> bn pair, a shared conv, or a BatchNorm without running statistics
        with torch.no_grad():
            scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = torch.nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)
        parent, name = parent_of[id(bn)]
        setattr(parent, name, torch.nn.Identity())
    with torch.inference_mode():
        actual = folded(example)
    tolerance = 1e-3 * (1 + float(expected.abs().max()))
    return folded if float((actual - expected).abs().max()) <= tolerance else model
