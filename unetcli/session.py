"""A training run's objects, built before the first event: the data, the seeded model with its optimiser and
gradient scaler, the crop loader, and the progress that model-last/ keeps (restored on --resume)."""

from __future__ import annotations

import hashlib
import math
import random
import time
import warnings
from collections.abc import Generator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data import Pair, find_pairs, resolve_layout, split_pairs
from .errors import UnetcliWarning, UsageError
from .masks import IGNORE_ID, ClassMap
from .modelmeta import ModelMeta, TileDefaults, default_tile_size
from .options import TrainOptions, parse_class_weights
from .runfolder import check_run_folder, row_metrics
from .scan import DataProgress, DatasetScan, drain, iter_scan, require_clean

if TYPE_CHECKING:
    import torch

    from .cache import CachePlan
    from .planner import Plan
    from .predictor import Predictor
    from .runtime import Distributed, Precision, StopRequest


@dataclass
class TrainingData:
    """A run's pairs, split into training and validation, read and scanned (no validation: val_scan None), and the
    stores training reads the decoded pairs from (set by `_open_stores`, after the run folder is checked)."""

    train_pairs: list[Pair]
    val_pairs: list[Pair]
    scan: DatasetScan
    val_scan: DatasetScan | None
    cache: CachePlan | None = None
    fingerprints: tuple[str, str] = ("", "")  # --cache disk: what the training and validation caches were made from
    store: object = None  # cache.RamStore | StreamStore | DiskStore
    val_store: object = None


def _load_data(options: TrainOptions) -> Generator[DataProgress, None, TrainingData]:
    """Pair, split, read and check the training (and validation) data; refuse any problem. The decoded pairs are
    kept as --cache says; with --cache disk and a cache of these files in the run folder (--resume), the scan
    stored with it is used and no image is read."""
    from .cache import reuse_scan

    images_dir, masks_dir = resolve_layout(options.data, options.images, options.masks)
    pairs = find_pairs(images_dir, masks_dir)
    if options.val is not None:
        train_pairs, val_pairs = pairs, find_pairs(*resolve_layout(options.val))
    else:
        train_pairs, val_pairs = split_pairs(pairs, options.val_split, options.seed, fold=options.fold, folds=options.folds)
    fingerprints, scan, val_scan = ("", ""), None, None
    if options.cache == "disk":
        fingerprints = _cache_fingerprints(options, train_pairs, val_pairs)
        scan = reuse_scan(Path(options.out) / "cache" / "train", fingerprints[0], train_pairs)
        val_scan = reuse_scan(Path(options.out) / "cache" / "val", fingerprints[1], val_pairs) if val_pairs else None
        scan = scan if val_scan is not None or not val_pairs else None
    reused = scan is not None
    if not reused:
        scan, val_scan = yield from _scan(options, train_pairs, val_pairs)
    if scan.alpha is not None:  # RGBA training images: say whether their alpha is dropped or kept
        warnings.warn(UnetcliWarning(scan.alpha.note()), stacklevel=2)
    if val_scan is not None and val_scan.in_channels != scan.in_channels:
        raise UsageError(f"validation images have {val_scan.in_channels} channels, training images {scan.in_channels}")
    return TrainingData(train_pairs, val_pairs, scan, val_scan, cache=_cache_plan(options, scan, val_scan, reused),
                        fingerprints=fingerprints)


def _scan(options: TrainOptions, train_pairs: list[Pair], val_pairs: list[Pair]) -> Generator[DataProgress, None, tuple]:
    """Read and check the training and validation pairs, keeping the decoded pairs that --cache lets memory hold."""
    from .cache import keep_budget

    budget = keep_budget(options.cache)
    scan = yield from iter_scan(train_pairs, mask_mode=options.mask_mode, ignore_value=options.ignore_index,
                                class_map_file=options.class_map_file, num_classes=options.classes, keep_bytes=budget)
    require_clean(scan, "training")
    if not val_pairs:
        return scan, None
    val_scan = yield from iter_scan(val_pairs, class_map=scan.class_map, in_channels=scan.in_channels,
                                    keep_bytes=budget - scan.decoded_bytes * scan.kept)
    require_clean(val_scan, "validation")
    return scan, val_scan


def _cache_plan(options: TrainOptions, scan: DatasetScan, val_scan: DatasetScan | None, reused: bool) -> CachePlan:
    """Where the pairs live and the memory that takes: the kept pairs (the training images as float32 when that fits
    too), a streaming store's bound, or nothing (disk)."""
    from .cache import MEMORY_SHARE, CachePlan, available_memory, stream_budget

    kinds = [("disk" if options.cache == "disk" else "ram" if s.kept else "none") if s else "" for s in (scan, val_scan)]
    val_bytes = val_scan.decoded_bytes if val_scan else 0
    unit = kinds[0] == "ram" and scan.unit_bytes + val_bytes <= MEMORY_SHARE * available_memory()
    held = [(scan.unit_bytes if unit else scan.decoded_bytes) if kinds[0] == "ram" else 0, val_bytes if kinds[1] == "ram" else 0]
    streaming = min(stream_budget(), scan.decoded_bytes) if "none" in kinds else 0
    return CachePlan(options.cache, *kinds, decoded_bytes=scan.decoded_bytes + val_bytes,
                     available=available_memory() if options.cache == "auto" else None, reused=reused,
                     folder=str(Path(options.out) / "cache"), memory_bytes=sum(held) + streaming, unit=unit)


def _cache_fingerprints(options: TrainOptions, train_pairs: list[Pair], val_pairs: list[Pair]) -> tuple[str, str]:
    """What the disk caches of the training and validation pairs are made from (cache.data_fingerprint)."""
    from .cache import data_fingerprint

    settings = {k: getattr(options, k) for k in ("mask_mode", "ignore_index", "class_map_file", "classes")}
    if options.class_map_file is not None:
        settings["class_map_text"] = Path(options.class_map_file).read_text(encoding="utf-8", errors="replace")
    train = data_fingerprint(train_pairs, settings)
    return train, data_fingerprint(val_pairs, {"train": train})


def _open_stores(options: TrainOptions, data: TrainingData, dist: Distributed) -> Generator[DataProgress, None, None]:
    """The stores training and validation read from: the kept pairs, streaming, or the disk cache (built by rank 0
    into RUN/cache/ unless it holds these files already)."""
    from .cache import DiskStore, RamStore, StreamStore, build_disk_store

    for name, scan, fingerprint in (("train", data.scan, data.fingerprints[0]), ("val", data.val_scan, data.fingerprints[1])):
        if scan is None:
            continue
        kind = data.cache.train if name == "train" else data.cache.val
        if kind == "ram":
            store = RamStore(scan.samples, unit=data.cache.unit and name == "train")
        elif kind == "none":
            store = StreamStore([s.pair for s in scan.samples], scan.class_map, scan.in_channels)
        else:
            folder = Path(options.out) / "cache" / name
            if dist.main:
                yield from build_disk_store(folder, scan, fingerprint)
            dist.barrier()
            store = DiskStore(folder, len(scan.samples))
        setattr(data, "store" if name == "train" else "val_store", store)


def _fingerprint(pairs: list[Pair], sizes: list[tuple[int, int]]) -> str:
    digest = hashlib.sha256()
    for pair, size in zip(pairs, sizes):
        digest.update(f"{pair.stem}:{size[0]}x{size[1]};".encode())
    return digest.hexdigest()[:16]


def _model_meta(options: TrainOptions, data: TrainingData, *, pipeline_config, eval_pipeline, train_pipeline,
                plan: Plan | None = None) -> ModelMeta:
    """The description every model folder of this run carries (epoch and metrics are set at each save)."""
    from .doubt import training_intensity
    from .transforms import to_dict

    scan = data.scan
    return ModelMeta(
        classes=scan.class_map, in_channels=scan.in_channels, tile=TileDefaults(default_tile_size(options.crop)),
        pipeline={"config": asdict(pipeline_config), "eval": to_dict(eval_pipeline), "train": to_dict(train_pipeline)},
        training=options.to_config(), alpha_dropped=scan.alpha_dropped, plan=plan.to_dict() if plan else None,
        data={"train_pairs": len(data.train_pairs), "val_pairs": len(data.val_pairs),
              "class_pixels": scan.class_pixels, "fingerprint": _fingerprint(data.train_pairs, scan.sizes)},
        intensity=training_intensity(scan.image_statistics),
    )


@dataclass
class Progress:
    """What model-last/train_state.pt keeps besides the optimiser: enough to continue exactly."""

    epoch: int = 0  # last completed epoch
    step: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    stale: int = 0  # epochs since the last improvement
    best_metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)

    def end_epoch(self, row: dict, score: float, min_delta: float) -> bool:
        """Record a finished epoch (its history row and score); True when it is the best so far."""
        is_best = score > self.best_score + min_delta
        self.epoch = row["epoch"]
        self.history.append(row)
        if is_best:
            self.best_score, self.best_epoch, self.stale, self.best_metrics = score, row["epoch"], 0, row_metrics(row)
        else:
            self.stale += 1
        return is_best


@dataclass
class Clock:
    """Wall-clock bookkeeping for --time-limit."""

    start: float  # when the command started: reading the data and planning count against the limit
    epochs_before: int  # epochs a resumed run had done before this process started
    epochs_start: float = 0.0  # when this process's first epoch started
    tail: float = 0.0  # seconds the last validation + save took

    def epoch_seconds(self, epoch: int) -> float:
        """The mean duration of the epochs this process ran, up to and including `epoch`."""
        return (time.monotonic() - self.epochs_start) / max(epoch - self.epochs_before, 1)

    def training_fraction(self, time_limit: float, now: float) -> float:
        """How far through its training time this process is: from its first step to the limit. Reading the data
        and planning took the rest; counted from the command's start, a schedule's warm-up (3 % of the limit)
        was over before the first step (`unetcli plan` on 20 membrane pairs: 10 s in the AVX2 stand-in)."""
        return (now - self.epochs_start) / max(time_limit - (self.epochs_start - self.start), 1.0)


@dataclass(kw_only=True)
class TrainingSession:
    """One training run's objects. `set_up` builds them; the loop in `train` updates `trained`, `progress`
    and `clock`."""

    options: TrainOptions
    dist: Distributed
    precision: Precision
    data: TrainingData
    predictor: Predictor  # validation predicts as `unetcli predict` does
    model: torch.nn.Module  # the plain network on the device: what is saved
    eager: torch.nn.Module  # the model, wrapped for DDP under torchrun
    trained: torch.nn.Module  # what the steps run: `eager`, or its torch.compile until compiling fails
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_pipeline: object  # the Albumentations train pipeline, reseeded per epoch
    loader: torch.utils.data.DataLoader
    sampler: torch.utils.data.DistributedSampler | None  # under torchrun only
    generator: torch.Generator  # the loader's shuffling, reseeded per epoch
    meta: ModelMeta  # unetcli.json of the model folders, less epoch and metrics
    progress: Progress
    plan: Plan | None = None  # what the planner chose (None with --no-plan and on --resume)
    clock: Clock | None = None  # set when the epochs start
    stop: StopRequest | None = None  # listening for SIGINT/SIGTERM while the epochs run

    @property
    def class_map(self) -> ClassMap:
        return self.data.scan.class_map

    @property
    def run_dir(self) -> Path:
        return Path(self.options.out)


def set_up(options: TrainOptions) -> Generator[DataProgress, None, TrainingSession]:
    """Device, data and run-folder checks, then the seeded model, optimiser and crop loader (resumed if asked);
    yields DataProgress while the data is read (and cached)."""
    import torch

    from . import planner
    from .crops import CropDataset
    from .runtime import Distributed, pick_device, pick_precision
    from .transforms import PipelineConfig, build_eval, build_train

    options.validate()  # the CLI has done so; a Python caller may not have
    dist = Distributed(pick_device(options.device))
    precision = pick_precision(options.precision, dist.device)
    data = yield from _load_data(options)
    plan = _plan(options, data, dist=dist, precision=precision) if planner.wanted(options) else None
    if plan is not None:
        options = plan.apply(options).validate()
    check_run_folder(options)
    dist.barrier()  # every rank has checked the folder before rank 0 creates it
    yield from _open_stores(options, data, dist)

    random.seed(options.seed)
    np.random.seed(options.seed)
    torch.manual_seed(options.seed)
    scan = data.scan
    pipeline_config = PipelineConfig(scan.mean, scan.std, options.crop, options.augment, options.foreground_crops)
    train_pipeline, eval_pipeline = build_train(pipeline_config), build_eval(pipeline_config)
    predictor, loss_fn, optimizer, scaler = _model_and_optimiser(options, data, eval_pipeline, dist=dist, precision=precision)
    progress = Progress()
    if options.resume:
        progress = _resume(options, predictor.model, optimizer, scaler=scaler, class_map=scan.class_map)
    eager = trained = dist.wrap(predictor.model)
    if options.compile:
        trained = torch.compile(eager)  # compiles at the first step; the loop falls back to `eager` if that fails
    border = (options.border_w0, options.border_sigma) if options.border_weight else None
    dataset = CropDataset(data.store, train_pipeline, length=max(options.samples_per_epoch, len(scan.samples)), border=border)
    sampler, generator, loader = _loader(options, dataset, train_pipeline, dist=dist)
    return TrainingSession(
        options=options, dist=dist, precision=precision, data=data, predictor=predictor, model=predictor.model, eager=eager,
        trained=trained, loss_fn=loss_fn, optimizer=optimizer, scaler=scaler, train_pipeline=train_pipeline, loader=loader,
        sampler=sampler, generator=generator, progress=progress, plan=plan,
        meta=_model_meta(options, data, pipeline_config=pipeline_config, eval_pipeline=eval_pipeline,
                         train_pipeline=train_pipeline, plan=plan),
    )


def plan_run(options: TrainOptions) -> Plan:
    """`unetcli plan`: read the data and plan the run as `set_up` would, without training."""
    from .runtime import Distributed, pick_device, pick_precision

    options.validate()
    dist = Distributed(pick_device(options.device))
    data = drain(_load_data(replace(options, cache="none")))  # planning needs no decoded pairs kept
    try:
        return _plan(options, data, dist=dist, precision=pick_precision(options.precision, dist.device))
    finally:
        dist.close()


def _plan(options: TrainOptions, data: TrainingData, *, dist: Distributed, precision: Precision) -> Plan:
    """Plan the options the user left out (see planner.py); every rank plans, rank 0's plan is used by all."""
    from .fingerprint import fingerprint
    from .model import output_channels
    from .planner import make_plan

    class_map = data.scan.class_map
    plan = make_plan(fingerprint(data.scan, data.val_scan), options, device=dist.device, precision=precision,
                     out_channels=output_channels(class_map.num_classes, class_map.is_binary))
    return dist.share(plan)


def _model_and_optimiser(options: TrainOptions, data: TrainingData, eval_pipeline, *, dist: Distributed,
                         precision: Precision) -> tuple:
    """(predictor, loss, optimiser, gradient scaler): the freshly initialised model, on the device, inside the
    Predictor that validation uses."""
    import torch

    from .model import SegmentationLoss, build_model, output_channels
    from .predictor import Predictor

    class_map, scan, device = data.scan.class_map, data.scan, dist.device
    model = build_model(options.encoder, scan.in_channels, output_channels(class_map.num_classes, class_map.is_binary),
                        options.encoder_weights, decoder_width=options.decoder_width, decoder=_resumed_decoder(options))
    predictor = Predictor(model, class_map, eval_pipeline, in_channels=scan.in_channels, device=device, precision=precision)
    loss_fn = SegmentationLoss(class_map.is_binary, IGNORE_ID, options.loss,
                               parse_class_weights(options.class_weights, scan.class_pixels)).to(device)
    # fused: one kernel per parameter tensor instead of a dozen (8 ms of a 630 ms CPU step, measured)
    optimizer = torch.optim.AdamW(predictor.model.parameters(), lr=options.lr, weight_decay=1e-4,
                                  fused=device.type in ("cpu", "cuda"))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.name == "fp16")
    return predictor, loss_fn, optimizer, scaler


def _loader(options: TrainOptions, dataset, train_pipeline, *, dist: Distributed) -> tuple:
    """(sampler, generator, DataLoader) of the training crops; each worker seeds the pipeline by worker and rank."""
    import torch

    from .cache import default_workers

    sampler = dist.sampler(dataset, options.seed)
    workers = options.workers if options.workers is not None else default_workers(dist.device.type, not dataset.store.in_memory)
    generator = torch.Generator()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=options.batch_size, shuffle=sampler is None, sampler=sampler,
        drop_last=len(dataset) >= options.batch_size * dist.world, num_workers=workers,
        pin_memory=dist.device.type == "cuda", persistent_workers=workers > 0, generator=generator,
        worker_init_fn=lambda worker: train_pipeline.set_random_seed(options.seed * 1000 + worker + 100 * dist.rank),
    )
    return sampler, generator, loader


def _resumed_decoder(options: TrainOptions) -> tuple[int, ...] | None:
    """The decoder widths model-last/ was built with, on --resume: a run begun by an earlier unetcli (whose
    128-wide decoder ended with 8 channels) resumes as it began."""
    from .checkpoint import read_config

    if not options.resume:
        return None
    return read_config(Path(options.out) / "model-last")[1].get("decoder_channels")


def _resume(options: TrainOptions, model, optimizer, *, scaler, class_map: ClassMap) -> Progress:
    """The progress of the run being resumed; its weights and training state are loaded into the fresh objects."""
    state = _restore(Path(options.out) / "model-last", model, optimizer, scaler=scaler, class_map=class_map)
    progress = Progress(**{k: state[k] for k in asdict(Progress())})
    if progress.epoch >= options.epochs:
        raise UsageError(f"{options.out}: the run already finished {progress.epoch} epochs; "
                         f"raise --epochs above {progress.epoch} to train on")
    return progress


def _restore(last: Path, model, optimizer, *, scaler, class_map: ClassMap) -> dict:
    """Load weights and training state from model-last/ into the freshly built objects."""
    import torch
    from safetensors.torch import load_file

    from .checkpoint import load_train_state, read_meta

    stored = read_meta(last).classes
    if stored.to_dict() != class_map.to_dict():
        raise UsageError(f"{last}: the masks now decode to other classes ({class_map.describe_values()}) than when the "
                         f"run started ({stored.describe_values()}); resume with the same data")
    state = load_train_state(last)
    weights = load_file(str(last / "model.safetensors"))
    model.load_state_dict({k: v.to(next(model.parameters()).device) for k, v in weights.items()})
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    return state
