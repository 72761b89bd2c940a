"""The model folder: smp's config.json + model.safetensors, plus unetcli.json (classes, pipeline, metrics).

Folders are written to a temporary sibling and renamed into place, so a crash never leaves a half-written
model. Loading never unpickles anything: weights come from safetensors, metadata from JSON, and the
network is built with encoder_weights=None, so it never touches the network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ModelFolderError, OutputError
from .images import process_alive
from .masks import ClassMap
from .modelmeta import META_FILE, ModelMeta

REQUIRED_FILES = ("config.json", "model.safetensors", META_FILE)
TRAIN_STATE_FILE = "train_state.pt"
ENSEMBLE_FILE = "ensemble.json"  # an ensemble folder (train --folds K): its members, loaded as one model (ensemble.py)


def is_ensemble(path: Path) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file() and not (Path(path) / META_FILE).is_file()


def package_versions() -> dict[str, str]:
    import segmentation_models_pytorch
    import torch

    from .transforms import A as albumentations

    return {
        "unetcli": __version__,
        "torch": torch.__version__,
        "segmentation_models_pytorch": segmentation_models_pytorch.__version__,
        "albumentations": albumentations.__version__,
        "python": platform.python_version(),
    }


def unwrap(model):
    """The plain module behind DistributedDataParallel and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def recover_folder(target: Path) -> None:
    """Undo what a killed `replace_folder` left behind: when `target` was moved aside (`.NAME.old-PID`) but
    not yet replaced, it comes back; temporary folders of processes that are gone are removed."""
    target = Path(target)
    for old in target.parent.glob(f".{target.name}.old-*"):
        if target.exists():
            break
        try:
            os.replace(old, target)
        except OSError:  # another process (a second torchrun rank) restored it first
            pass
    for path in [*target.parent.glob(f".{target.name}.old-*"), *target.parent.glob(f".{target.name}.tmp-*")]:
        pid = path.name.rpartition("-")[2]
        if path.exists() and pid.isdigit() and (int(pid) == os.getpid() or not process_alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)


def replace_folder(target: Path, write: Callable[[Path], None], *, trial: bool = False) -> None:
    """Fill a temporary sibling folder with `write`, then swap it in place of `target`. Between the two
    renames `target` is missing; `recover_folder` (run here first, and on --resume) repairs a save killed there.
    A trial fills the temporary folder and deletes it: it fails as the save would, and replaces nothing."""
    target = Path(target)
    if target.parent.is_dir():
        recover_folder(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        if trial:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise OutputError(f"{target}: cannot write the model folder ({err.strerror or err}); check free space and permissions") from None
    except BaseException:  # an error inside smp's save (ImportError, ...), a second Ctrl-C: put the previous folder back
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_model_folder(target: Path, model, meta: ModelMeta, *, train_state: dict | None = None,
                      extra_files: dict[str, bytes] | None = None, trial: bool = False) -> None:
    import torch

    plain = unwrap(model)

    def write_files(folder: Path) -> None:
        plain.save_pretrained(folder)
        (folder / "README.md").unlink(missing_ok=True)  # smp's generic hub card; unetcli.json says more
        dataclasses.replace(meta, versions=package_versions()).save(folder)
        if train_state is not None:
            torch.save(train_state, folder / TRAIN_STATE_FILE)
        for name, data in (extra_files or {}).items():
            (folder / name).write_bytes(data)

    def write(folder: Path) -> None:
        from safetensors import SafetensorError

        try:
            write_files(folder)
        except (SafetensorError, RuntimeError) as err:  # how safetensors and torch.save report a full disk
            raise OSError(str(err).splitlines()[0][:200] if str(err) else type(err).__name__) from err

    replace_folder(target, write, trial=trial)


def copy_model_folder(source: Path, target: Path, meta: ModelMeta) -> None:
    """A copy of the model folder `source` at `target` described by `meta` (unetcli calibrate: a new temperature),
    written atomically; the training state is left out (the copy predicts, it does not resume). `source` is only read.
    An ensemble folder is copied with its members (ensemble.py), the temperature going into its ensemble.json."""
    from .ensemble import copy_ensemble

    source = Path(source)
    if is_ensemble(source):
        copy_ensemble(source, target, temperature=meta.temperature, calibration=meta.calibration)
        return

    def write(folder: Path) -> None:
        for path in sorted(source.iterdir()):
            if path.is_file() and path.name not in (META_FILE, TRAIN_STATE_FILE):
                shutil.copy2(path, folder / path.name)
        meta.save(folder)

    replace_folder(target, write)


@dataclass(frozen=True)
class LoadedModel:
    path: Path
    model: Any  # torch.nn.Module in eval mode
    meta: ModelMeta

    @property
    def class_map(self) -> ClassMap:
        return self.meta.classes

    @property
    def binary(self) -> bool:
        return self.meta.binary

    @property
    def in_channels(self) -> int:
        return self.meta.in_channels

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    @property
    def temperature(self) -> float:
        return self.meta.temperature


def resolve_model_dir(path: Path) -> Path:
    """A model folder, or a run folder standing for its model-best/ (an ensemble folder stands for itself)."""
    path = Path(path)
    if not is_ensemble(path) and not (path / META_FILE).exists() and (path / "model-best" / META_FILE).exists():
        return path / "model-best"
    return path


def read_meta(path: Path) -> ModelMeta:
    """The checked (and, for older folders, upgraded) description of a model folder (an ensemble folder: see
    ensemble.py)."""
    path = Path(path)
    if is_ensemble(path):
        from .ensemble import read_ensemble_meta

        return read_ensemble_meta(path)
    if not path.is_dir():
        raise ModelFolderError(f"{path}: not a model folder (expected a folder such as runs/NAME/model-best)")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        hint = " (it looks like a run folder: use its model-best/ or model-last/)" if (path / "model-best").is_dir() else ""
        raise ModelFolderError(f"{path}: model folder is missing {', '.join(missing)}{hint}")
    return ModelMeta.load(path)


def read_config(path: Path) -> tuple[type, dict]:
    """config.json checked without building anything: a known smp architecture and encoder.
    Returns the model class and its constructor arguments (with encoder_weights=None); an ensemble folder's are its
    first member's."""
    import segmentation_models_pytorch as smp

    if is_ensemble(path):
        from .ensemble import member_folders

        return read_config(member_folders(path)[0])
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"{path / 'config.json'}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{path / 'config.json'}: not an smp model configuration (a JSON object)")
    arch = config.get("_model_class", "Unet")
    architectures = {cls.__name__: cls for cls in smp.__dict__.values()
                     if isinstance(cls, type) and issubclass(cls, smp.base.SegmentationModel) and cls is not smp.base.SegmentationModel}
    if arch not in architectures:
        raise ModelFolderError(f"{path / 'config.json'}: unknown architecture {arch!r}; known: {', '.join(sorted(architectures))}")
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    kwargs["encoder_weights"] = None  # never download at load time
    encoder = kwargs.get("encoder_name")
    if encoder not in smp.encoders.get_encoder_names():
        raise ModelFolderError(f"{path / 'config.json'}: unknown encoder {encoder!r}; was it written by a newer smp?")
    return architectures[arch], kwargs


def _config_value(path: Path, key: str, default):
    """One entry of config.json (read_config has checked it is a JSON object), smp's default if absent."""
    return json.loads((path / "config.json").read_text(encoding="utf-8")).get(key, default)


def _build_from_config(path: Path):
    architecture, kwargs = read_config(path)
    arch = architecture.__name__
    try:
        return architecture(**kwargs)
    except (TypeError, ValueError, KeyError) as err:
        raise ModelFolderError(f"{path / 'config.json'}: cannot build {arch} from it ({err})") from None


def load_model_folder(path: Path) -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if is_ensemble(path):
        from .ensemble import load_ensemble

        return load_ensemble(path)
    meta = read_meta(path)
    class_map = meta.classes
    model = _build_from_config(path)
    try:
        state = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFolderError(f"{path / 'model.safetensors'}: cannot read the weights ({err})") from None
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as err:
        first = str(err).splitlines()[0][:200]
        raise ModelFolderError(f"{path / 'model.safetensors'}: weights do not fit config.json ({first})") from None
    have = {"in_channels": _config_value(path, "in_channels", 3), "classes": _config_value(path, "classes", 1)}
    want = {"in_channels": meta.in_channels, "classes": meta.out_channels}
    if have != want:
        raise ModelFolderError(
            f"{path / META_FILE}: describes {want['in_channels']} input channel(s) and {want['classes']} output "
            f"channel(s) ({class_map.mode}, {class_map.num_classes} classes), but the network in config.json and "
            f"model.safetensors has {have['in_channels']} and {have['classes']}; the model folder is damaged")
    model.eval()
    return LoadedModel(path, model, meta)


def load_train_state(path: Path) -> dict:
    """Our own training state. weights_only=True: a crafted file cannot run code when loaded."""
    import pickle

    import torch

    try:
        return torch.load(Path(path) / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFolderError(f"{path}: no {TRAIN_STATE_FILE}; only model-last/ folders can be resumed") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).splitlines()[0][:200]
        raise ModelFolderError(f"{Path(path) / TRAIN_STATE_FILE}: refused or damaged training state ({first})") from None
