"""Export a model folder to ONNX or TorchScript, with a sidecar JSON and a numeric check against PyTorch,
or to a clean model folder for sharing (no training state; `--half` stores fp16 weights at half the size).

The network is exported in fp32 eval mode on the CPU. The sidecar (`FILE.json`) says everything a
deployment needs to feed the exported network exactly as `unetcli predict` does: channels and their order,
scaling to [0, 1], mean/std normalisation, padding to the stride and cropping back, the class table, the
binary threshold and the tile defaults. Before anything is renamed into place, the exported file is loaded
back (onnxruntime for ONNX, torch.jit.load for TorchScript) and its logits are compared with PyTorch's on a
random image of a size that is not a multiple of 32, padded by the model's own eval pipeline; a batch of
two proves the dynamic batch axis.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .errors import OutputError, UnetcliError, UsageError, first_line
from .modelmeta import META_FILE, ModelMeta
from .transforms import STRIDE

FORMATS = ("onnx", "torchscript", "folder")
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript",
            ".torchscript": "torchscript"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # exporter (dynamo: onnx + onnxscript) and checker
SIDECAR_FORMAT = "unetcli-export"
SIDECAR_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "image", "logits"
TRACE_SIZE = 256  # side of the dummy input the network is traced/exported with
CHECK_SHAPE = (2, 75, 150)  # batch, height, width of the check images (padded to 96 x 160 by the pipeline)
TOLERANCE = 1e-3  # largest accepted absolute difference of logits between the export and PyTorch
HALF_TOLERANCE = 0.01  # fp16 weights: largest difference relative to the largest |logit| (11 significant bits)


class ExportCheckError(UnetcliError):
    """The exported network does not compute what the PyTorch model computes."""

    exit_code = 1


@dataclass(frozen=True)
class ExportResult:
    format: str  # onnx | torchscript | folder
    file: Path  # the exported network (or model folder)
    sidecar: Path  # FILE.json: preprocessing, classes, threshold, tiles, provenance (a folder's unetcli.json)
    model: Path  # the model folder it came from
    max_abs_diff: float  # largest |logit difference| between the export and PyTorch on the check input
    tolerance: float  # the check's limit for max_abs_diff
    check_input: tuple[int, ...]  # N, C, H, W of the (padded) check input
    opset: int | None = None  # ONNX opset; None for TorchScript

    def to_dict(self) -> dict:
        return {"format": self.format, "file": str(self.file), "sidecar": str(self.sidecar),
                "model": str(self.model), "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
                "check_input": list(self.check_input), "opset": self.opset}


def pick_format(fmt: str, file: Path) -> str:
    """'onnx' | 'torchscript' | 'auto' (from FILE's suffix); refuses a suffix that names the other format."""
    suffix_format = SUFFIXES.get(Path(file).suffix.lower())
    if fmt == "auto" and Path(file).suffix == "":
        return "folder"
    if fmt == "auto":
        if suffix_format is None:
            raise UsageError(f"{file}: cannot tell the format from the file name; give --format onnx, "
                             "torchscript or folder (or name the file .onnx / .pt, or a folder without a suffix)")
        return suffix_format
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if suffix_format is not None and suffix_format != fmt:
        raise UsageError(f"--format {fmt} but {file} is named like a {suffix_format} file; "
                         f"use --format {suffix_format} or rename the output")
    return fmt


def require_onnx_packages() -> dict[str, str]:
    """The ONNX packages' versions, or one clear error naming the extra to install."""
    import torch

    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    if (major, minor) < (2, 6):
        raise UnetcliError(f"ONNX export uses torch's dynamo exporter, which needs torch 2.6 or newer (found "
                           f"{torch.__version__}); upgrade torch, or use --format torchscript")
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise UnetcliError(f"ONNX export needs the package(s) {', '.join(missing)}; install them with: "
                           "pip install 'unetcli[onnx]'")
    from importlib.metadata import version

    return {name: version(name) for name in ONNX_PACKAGES}


def _check_target(file: Path, model_dir: Path) -> None:
    from .checkpoint import REQUIRED_FILES

    if file.is_dir():
        raise OutputError(f"{file}: is a folder; -o names the file to write, e.g. {file / 'model.onnx'}")
    if file.name in REQUIRED_FILES and file.parent.resolve() == model_dir.resolve():
        raise OutputError(f"{file}: would overwrite a file of the model folder; choose another name")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{file.parent}: cannot create the output folder ({err.strerror or err})") from None


def check_batch(meta: ModelMeta, shape: tuple[int, int, int] = CHECK_SHAPE, seed: int = 0) -> np.ndarray:
    """Random [0, 1] images of an odd size through the model's stored eval pipeline -> (N, C, H', W') float32."""
    from .transforms import from_dict, to_network_input

    pipeline = from_dict(meta.pipeline["eval"])
    rng = np.random.default_rng(seed)
    batch, height, width = shape
    images = [to_network_input(pipeline, rng.random((height, width, meta.in_channels), dtype=np.float32))[0]
              for _ in range(batch)]
    return np.ascontiguousarray(np.stack(images), dtype=np.float32)


def _export_onnx(model, dummy, tmp: Path) -> int:
    import torch

    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (dummy,), None, dynamo=True, verbose=False, external_data=False,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes={"x": dims})
            program.save(str(tmp))
    except OSError:
        raise
    except Exception as err:  # torch.export / onnxscript raise many kinds
        raise UnetcliError(f"ONNX export failed ({first_line(err)}); try --format torchscript, or rerun with "
                           "--debug and report the traceback") from err
    opsets = {entry.domain: entry.version for entry in program.model_proto.opset_import}
    return int(opsets.get("", opsets.get("ai.onnx", 0)))


def _run_onnx(tmp: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no provider chatter on stderr
    try:
        session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
        out = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    except Exception as err:  # onnxruntime's own exception types
        raise ExportCheckError(f"onnxruntime cannot run the exported network ({first_line(err)}); nothing was "
                               "written. Try --format torchscript, or rerun with --debug and report it") from err
    del session  # release the file before it is renamed (Windows)
    return out


def _export_torchscript(model, dummy, tmp: Path) -> None:
    import torch

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarning and torch.jit's deprecation notice
            traced = torch.jit.trace(model, dummy, check_trace=False)  # our own check follows
            torch.jit.save(traced, str(tmp))
    except OSError:
        raise
    except Exception as err:
        raise UnetcliError(f"TorchScript export failed ({first_line(err)}); try --format onnx, or rerun with "
                           "--debug and report the traceback") from err


def _run_torchscript(tmp: Path, batch: np.ndarray) -> np.ndarray:
    import torch

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(tmp), map_location="cpu")
            return module(torch.from_numpy(batch)).numpy()
    except Exception as err:
        raise ExportCheckError(f"the exported TorchScript network cannot be loaded and run ({first_line(err)}); "
                               "nothing was written. Try --format onnx, or rerun with --debug and report it") from err


def describe(loaded, fmt: str, file: Path, *, check: dict, versions: dict) -> dict:
    """The sidecar: how to feed the exported network and read its output, as `unetcli predict` does."""
    meta = loaded.meta
    config = meta.pipeline_config
    channels = loaded.in_channels
    binary = loaded.binary
    threshold = loaded.threshold
    order = {1: "gray", 3: "RGB", 4: "RGBA"}.get(channels, "as stored")
    output = {
        "name": OUTPUT_NAME,
        "layout": "NCHW",
        "dtype": "float32",
        "channels": 1 if binary else loaded.class_map.num_classes,
        "activation": "sigmoid" if binary else "softmax",
        "temperature": meta.temperature,  # calibrated probabilities: activation(logits / temperature)
        "class_ids": ("foreground (class 1) where sigmoid(logit / temperature) > threshold, i.e. logit > "
                      "logit_threshold; else background (class 0)") if binary else "argmax over the channels",
        "mask_values": "class id i is written as classes.classes[i].value (the training masks' own values)",
    }
    if binary:
        output["logit_threshold"] = meta.temperature * math.log(threshold / (1 - threshold))
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "export_format": fmt,
        "file": file.name,
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "channels": channels,
            "channel_order": order,
            "dynamic_axes": {"0": "batch", "2": "height", "3": "width"},
            "steps": [
                "decode the image in RGB(A) order (not OpenCV's BGR)",
                "scale to [0, 1] by the pixel type's range: uint8 / 255, uint16 / 65535; float images as they are",
                "normalise per channel: (x - mean) / std",
                (f"pad bottom and right to a multiple of {STRIDE} by reflection without repeating the edge "
                 "(OpenCV BORDER_REFLECT_101, numpy mode 'reflect')"),
                "run the network, then crop the logits back to the image's height and width ([..., :h, :w])",
            ],
            "scale": {"uint8": 255, "uint16": 65535, "float32": 1},
            "mean": list(config["mean"]),
            "std": list(config["std"]),
            "pad": {"multiple": STRIDE, "mode": "reflect", "opencv_border": "BORDER_REFLECT_101",
                    "sides": ["bottom", "right"], "crop_back": True},
        },
        "output": output,
        "binary": binary,
        "threshold": threshold,
        "classes": meta.classes.to_dict(),
        "tile": dataclasses.asdict(meta.tile),
        "pipeline": {"config": config, "eval": meta.pipeline["eval"]},
        "check": check,
        "source": {"model": str(loaded.path.resolve()), "epoch": meta.epoch, "metrics": meta.metrics,
                   "versions": meta.versions},
        "versions": versions,
    }


def export_folder(model_dir: Path, target: Path, *, half: bool, tolerance: float) -> ExportResult:
    """A clean model folder (config.json, model.safetensors, unetcli.json; no training state) for sharing.
    With `half` the weights are stored as fp16 (half the size); loading turns them back into fp32. The copy
    is loaded back and its logits compared with the original's before it is renamed into place."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from .checkpoint import is_ensemble, load_model_folder, replace_folder

    if is_ensemble(model_dir):
        from .ensemble import export_ensemble_folder

        return export_ensemble_folder(model_dir, target, half=half, tolerance=tolerance)
    source = load_model_folder(model_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OutputError(f"{target}: already exists; choose a new folder for -o (nothing was changed)")
    state = load_file(str(source.path / "model.safetensors"))
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    batch = torch.from_numpy(check_batch(source.meta))
    with torch.no_grad():
        reference = source.model.float()(batch).numpy()

    def write(folder: Path) -> None:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        shutil.copyfile(source.path / "config.json", folder / "config.json")
        dataclasses.replace(source.meta.shareable(), weights_dtype="float16" if half else "float32").save(folder)
        checks.append(check_copy(folder, batch, reference, half=half, tolerance=tolerance))

    checks: list[tuple[float, float]] = []  # (max |difference|, its limit), set by write()
    replace_folder(target, write)
    (diff, limit), = checks
    return ExportResult(format="folder", file=target, sidecar=target / META_FILE, model=source.path, max_abs_diff=diff,
                        tolerance=limit, check_input=tuple(batch.shape))


def check_copy(folder: Path, batch, reference: np.ndarray, *, half: bool, tolerance: float, what: str = "model") -> tuple[float, float]:
    """Load the copy written to `folder` and compare its logits on `batch` with the original's `reference`: (max
    |difference|, limit); ExportCheckError above the limit (with `half` 1 % of the largest logit x tolerance)."""
    import torch

    from .checkpoint import load_model_folder

    with torch.no_grad():
        copied = load_model_folder(folder).model(batch).numpy()
    diff = float(np.abs(copied - reference).max())
    limit = tolerance * max(1.0, float(np.abs(reference).max())) if half else tolerance
    if not diff <= limit:
        raise ExportCheckError(f"the copied {what} differs from the original by up to {diff:.3g} in the logits "
                               f"(limit {limit:.3g}); nothing was written. Raise --tolerance or drop --half")
    return diff, limit


def _check_tolerance(tolerance: float | None, half: bool) -> float:
    if tolerance is None:
        return HALF_TOLERANCE if half else TOLERANCE
    if not tolerance > 0:
        raise UsageError(f"--tolerance {tolerance}: use a positive number (default {TOLERANCE})")
    return tolerance


def _export_checked(model, fmt: str, tmp: Path, *, batch: np.ndarray, tolerance: float) -> tuple[int | None, float]:
    """Write the network to `tmp` and run it back on `batch`; returns (ONNX opset or None, max |difference|
    from PyTorch's logits). Raises ExportCheckError when the difference is above `tolerance`."""
    import torch

    dummy = torch.randn(1, batch.shape[1], TRACE_SIZE, TRACE_SIZE)
    with torch.no_grad():
        reference = model(torch.from_numpy(batch)).numpy()
    if fmt == "onnx":
        opset = _export_onnx(model, dummy, tmp)
        exported = _run_onnx(tmp, batch)
    else:
        opset = None
        _export_torchscript(model, dummy, tmp)
        exported = _run_torchscript(tmp, batch)
    if exported.shape != reference.shape:
        raise ExportCheckError(f"the exported {fmt} network returns logits of shape {list(exported.shape)} "
                               f"where PyTorch gives {list(reference.shape)}; nothing was written")
    diff = float(np.abs(exported.astype(np.float32) - reference).max())
    if not diff <= tolerance:  # also catches NaN
        raise ExportCheckError(f"the exported {fmt} network differs from PyTorch by up to {diff:.3g} in the "
                               f"logits (limit {tolerance:g}); nothing was written. Rerun with --debug and "
                               "report it")
    return opset, diff


def export_model(model_dir: Path, file: Path, fmt: str = "auto", *, tolerance: float | None = None,
                 half: bool = False) -> ExportResult:
    """Export the model folder to FILE (ONNX or TorchScript) and FILE.json, or to a clean model folder;
    check the logits against PyTorch.

    Nothing is renamed into place unless the check passes (max |difference| <= tolerance)."""
    import torch

    from .checkpoint import load_model_folder
    from .images import write_bytes_atomic

    file = Path(file)
    fmt = pick_format(fmt, file)
    if half and fmt != "folder":
        raise UsageError(f"--half applies to --format folder only (the {fmt} export is fp32)")
    tolerance = _check_tolerance(tolerance, half)
    if fmt == "folder":
        return export_folder(Path(model_dir), file, half=half, tolerance=tolerance)
    versions = {"unetcli": __version__, "torch": torch.__version__}
    if fmt == "onnx":
        versions.update(require_onnx_packages())
    loaded = load_model_folder(model_dir)
    _check_target(file, loaded.path)
    batch = check_batch(loaded.meta)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        opset, diff = _export_checked(loaded.model.float().eval().cpu(), fmt, tmp, batch=batch, tolerance=tolerance)
        check = {"input_shape": list(batch.shape), "max_abs_diff": diff, "tolerance": tolerance,
                 "runtime": "onnxruntime (CPU)" if fmt == "onnx" else "torch.jit.load (CPU)"}
        sidecar = file.with_name(file.name + ".json")
        text = json.dumps(describe(loaded, fmt, file, check=check, versions=versions), indent=2) + "\n"
        os.replace(tmp, file)
    except OSError as err:
        raise OutputError(f"{file}: cannot write ({err.strerror or err}); check free space and permissions") from None
    finally:
        tmp.unlink(missing_ok=True)
    write_bytes_atomic(sidecar, text.encode("utf-8"))
    return ExportResult(format=fmt, file=file, sidecar=sidecar, model=loaded.path, max_abs_diff=diff, tolerance=tolerance,
                        check_input=tuple(batch.shape), opset=opset)
