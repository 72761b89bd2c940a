"""An ensemble folder: `ensemble.json` naming member model folders (a `train --folds K` run: fold-1/model-best,
...), loaded as ONE model whose network averages the members' probabilities, so predict, evaluate, TTA, tiling
and export use it unchanged.

The network (`EnsembleNet`) gives each member its own input normalisation (each fold's training images had their
own mean and std: the ensemble's pipeline is the first member's, and the others' are reached by a per-channel
affine map of its output) and its own temperature, averages the sigmoid (binary) or softmax probabilities and
returns the logits of that mean: logit(p) for binary models, log(p) for softmax ones, computed in log space
(log-sum-exp) so confident members give no infinities. The ensemble's own temperature is 1.0 unless `unetcli
calibrate` fitted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .checkpoint import ENSEMBLE_FILE, LoadedModel, load_model_folder, read_meta, replace_folder
from .errors import ModelFolderError
from .images import write_bytes_atomic
from .modelmeta import ModelMeta

if TYPE_CHECKING:
    from .export import ExportResult

FORMAT_NAME = "unetcli-ensemble"
FORMAT_VERSION = 1
COMBINE = "mean of the members' probabilities (each with its own temperature)"


def write_description(folder: Path, members: list[str], cross_validation: dict | None = None, *,
                      temperature: float = 1.0, calibration: dict | None = None) -> None:
    """ensemble.json in `folder`: the member folders (relative to it), the cross-validated scores, the temperature."""
    data = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "members": members, "combine": COMBINE,
            "temperature": temperature, "calibration": calibration, "cross_validation": cross_validation}
    write_bytes_atomic(Path(folder) / ENSEMBLE_FILE, (json.dumps(data, indent=2) + "\n").encode())


def read_description(folder: Path) -> dict:
    """ensemble.json, checked: a list of member folders inside `folder`."""
    file = Path(folder) / ENSEMBLE_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"{file}: not valid JSON ({err}); the ensemble folder is damaged") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME or data.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(f"{file}: not a unetcli ensemble description (format {FORMAT_NAME} version {FORMAT_VERSION})")
    members = data.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) and ".." not in Path(m).parts
                                                               and not Path(m).is_absolute() for m in members):
        raise ModelFolderError(f"{file}: 'members' must list the member model folders, relative to {folder}")
    temperature = data.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ModelFolderError(f"{file}: temperature is {temperature!r}, not a positive number; the ensemble folder is damaged")
    return data


def member_folders(folder: Path) -> list[Path]:
    return [Path(folder) / member for member in read_description(folder)["members"]]


def _agree(file: Path, metas: list[ModelMeta], names: list[str]) -> None:
    """Members must decode the same classes from the same kind of input through the same steps."""
    def signature(meta: ModelMeta) -> dict:
        steps = [t["__class_fullname__"] for t in meta.pipeline["eval"]["transform"]["transforms"]]
        return {"classes": meta.classes.to_dict(), "input channels": meta.in_channels, "threshold": meta.threshold,
                "dropped alpha": meta.alpha_dropped, "eval pipeline": steps}

    first = signature(metas[0])
    for meta, name in zip(metas[1:], names[1:]):
        differs = [key for key, value in signature(meta).items() if value != first[key]]
        if differs:
            raise ModelFolderError(f"{file}: member {name} differs from {names[0]} in its {', '.join(differs)}; the members "
                                   "of an ensemble must come from one data set and one set of options (retrain them)")


def ensemble_meta(folder: Path, metas: list[ModelMeta], description: dict | None = None) -> ModelMeta:
    """The ensemble's description: the first member's (classes, pipeline, tile), with the ensemble's temperature,
    the cross-validated scores as its metrics, and how many pairs the members saw."""
    description = description or read_description(folder)
    first = metas[0]
    cv = description.get("cross_validation") or {}
    pairs = (first.data.get("train_pairs") or 0) + (first.data.get("val_pairs") or 0)
    return dataclasses.replace(
        first, epoch=None, metrics={f"cv_{k}": v for k, v in (cv.get("mean") or {}).items()},
        temperature=float(description.get("temperature", 1.0)), calibration=description.get("calibration"),
        data={"train_pairs": pairs, "members": description["members"], "cross_validation": cv})


def read_ensemble_meta(folder: Path) -> ModelMeta:
    description = read_description(folder)
    names = description["members"]
    metas = [read_meta(Path(folder) / name) for name in names]
    _agree(Path(folder) / ENSEMBLE_FILE, metas, names)
    return ensemble_meta(folder, metas, description)


class EnsembleNet(torch.nn.Module):
    """K networks as one: logits of the mean of their (temperature-scaled) probabilities."""

    def __init__(self, members: list[torch.nn.Module], *, binary: bool, temperatures: list[float],
                 scales: torch.Tensor, shifts: torch.Tensor):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.binary = binary
        self.register_buffer("temperatures", torch.tensor(temperatures, dtype=torch.float32))
        self.register_buffer("scales", scales.float())  # (K, C, 1, 1): the ensemble's normalised input -> member k's
        self.register_buffer("shifts", shifts.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = [member(x * self.scales[k] + self.shifts[k]).float() / self.temperatures[k]
                  for k, member in enumerate(self.members)]
        stacked = torch.stack(logits)
        if self.binary:  # log mean sigmoid(z) - log mean sigmoid(-z), the log K terms cancelling; log sigmoid(z) is
            softplus = torch.nn.functional.softplus  # written -softplus(-z): ONNX's LogSigmoid underflows to -inf
            return torch.logsumexp(-softplus(-stacked), 0) - torch.logsumexp(-softplus(stacked), 0)
        return torch.logsumexp(torch.log_softmax(stacked, dim=2), 0) - math.log(len(self.members))


def _input_maps(metas: list[ModelMeta]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per member (scale, shift) taking the first member's normalised input (u - m0) / s0 to (u - mk) / sk."""
    mean0, std0 = (torch.tensor(metas[0].pipeline_config[key], dtype=torch.float64) for key in ("mean", "std"))
    scales, shifts = [], []
    for meta in metas:
        mean, std = (torch.tensor(meta.pipeline_config[key], dtype=torch.float64) for key in ("mean", "std"))
        scales.append(std0 / std)
        shifts.append((mean0 - mean) / std)
    return torch.stack(scales)[:, :, None, None], torch.stack(shifts)[:, :, None, None]


def load_ensemble(folder: Path) -> LoadedModel:
    """The ensemble folder as one LoadedModel (see the module's description)."""
    folder = Path(folder)
    description = read_description(folder)
    names = description["members"]
    members = [load_model_folder(folder / name) for name in names]
    metas = [member.meta for member in members]
    _agree(folder / ENSEMBLE_FILE, metas, names)
    scales, shifts = _input_maps(metas)
    net = EnsembleNet([member.model for member in members], binary=metas[0].binary,
                      temperatures=[meta.temperature for meta in metas], scales=scales, shifts=shifts)
    return LoadedModel(folder, net.eval(), ensemble_meta(folder, metas, description))


def copy_ensemble(source: Path, target: Path, *, temperature: float, calibration: dict | None,
                  copy_member=None, check=None) -> None:
    """A copy of the ensemble folder `source` at `target` (written atomically) with another temperature (unetcli
    calibrate). `copy_member(member, folder)` writes each member (default: its files without training state);
    `check(folder)`, given, runs on the written copy before it is renamed into place (and may refuse it)."""
    from .checkpoint import TRAIN_STATE_FILE

    source, description = Path(source), read_description(source)

    def copy_files(member: Path, folder: Path) -> None:
        folder.mkdir(parents=True)
        for path in sorted(member.iterdir()):
            if path.is_file() and path.name != TRAIN_STATE_FILE:
                shutil.copy2(path, folder / path.name)

    def write(folder: Path) -> None:
        names = [Path(name).parent.name if Path(name).name == "model-best" and len(Path(name).parts) > 1 else Path(name).name
                 for name in description["members"]]
        if len(set(names)) < len(names):
            names = [f"member-{k}" for k in range(1, len(names) + 1)]
        for name, member in zip(names, description["members"]):
            (copy_member or copy_files)(source / member, folder / name)
        write_description(folder, names, description.get("cross_validation"), temperature=temperature,
                          calibration=calibration)
        if check is not None:
            check(folder)

    replace_folder(target, write)


def export_ensemble_folder(model_dir: Path, target: Path, *, half: bool, tolerance: float) -> ExportResult:
    """An ensemble folder (train --folds K) to share: ensemble.json plus each member exported as `export_folder`
    does (each checked), then the whole copy loaded back and its logits compared with the original ensemble's."""
    from .errors import OutputError
    from .export import ExportResult, check_batch, check_copy, export_folder

    source = load_model_folder(model_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OutputError(f"{target}: already exists; choose a new folder for -o (nothing was changed)")
    batch = torch.from_numpy(check_batch(source.meta))
    with torch.no_grad():
        reference = source.model.float()(batch).numpy()
    checks: list[tuple[float, float]] = []  # (max |difference|, its limit) of the whole copy

    copy_ensemble(source.path, target, temperature=source.meta.temperature, calibration=source.meta.calibration,
                  copy_member=lambda member, folder: export_folder(member, folder, half=half, tolerance=tolerance),
                  check=lambda folder: checks.append(check_copy(folder, batch, reference, half=half, tolerance=tolerance,
                                                                what="ensemble")))
    (diff, limit), = checks
    return ExportResult(format="folder", file=target, sidecar=target / ENSEMBLE_FILE, model=source.path, max_abs_diff=diff,
                        tolerance=limit, check_input=tuple(batch.shape))
