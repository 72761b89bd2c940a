"""One pass over a dataset's pairs: sizes, channels, alpha, mask values -> class map, class pixels and channel
statistics, and every problem found. What `check` reports and `train` builds on.

The pass reads each pair once, in threads (OpenCV and zlib decode without the GIL), and keeps only per-pair
figures (sizes, per-channel sums, mask value counts); the decoded arrays are kept too only while they fit
`keep_bytes` (the RAM cache, see cache.py). Class pixel counts come from each mask's value counts, so masks are
not decoded a second time (instance masks excepted: their borders need the pixels).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .channels import AlphaCheck, alpha_range, channel_sums, check_alpha, match_channels, mean_and_std
from .data import Pair, _short_list, read_pair_mask, read_sample
from .errors import DataError
from .images import RawMask
from .instance_masks import instance_signs, object_ids
from .mask_modes import infer_class_map
from .masks import IGNORE_ID, ClassMap, MaskStats, mask_stats

PLANNER_MASKS = 32  # masks of the first pairs kept decoded for the planner (fingerprint.typical_object_diameter)
PROGRESS_SECONDS = 0.25  # DataProgress events at most this often (and one at the end)


@dataclass(frozen=True)
class DataProgress:
    """`done` of `total` pairs read ('reading data') or written to the disk cache ('caching data')."""

    what: str
    done: int
    total: int
    seconds: float = 0.0  # since this pass began


@dataclass
class ScannedPair:
    """One pair as the scan saw it. `image`, `mask` and `objects` are set when the scan kept the decoded pair
    (the RAM cache); `mask` also for the first PLANNER_MASKS pairs."""

    pair: Pair
    shape: tuple[int, int, int]  # height, width and channels as the model takes them
    dtype: str  # the image's stored dtype
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    objects: np.ndarray | None = None  # instance masks: the object ids, for the border weight map
    statistics: np.ndarray | None = None  # 2 x C: the image's per-channel mean and std in [0, 1] units

    @property
    def nbytes(self) -> int:
        """Decoded size: the image in its stored dtype and one byte of class id per pixel."""
        height, width, channels = self.shape
        return height * width * (channels * np.dtype(self.dtype).itemsize + 1)


@dataclass
class DatasetScan:
    """What `unetcli check` reports and `train` builds on."""

    samples: list[ScannedPair]
    problems: list[str] = field(default_factory=list)
    class_map: ClassMap | None = None
    in_channels: int | None = None
    class_pixels: list[int] = field(default_factory=list)
    ignored_pixels: int = 0  # pixels of the ignored mask value (left out of loss and metrics)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    alpha: AlphaCheck | None = None  # RGBA images: whether their alpha is one constant (then dropped) or varies
    notes: list[str] = field(default_factory=list)  # e.g. masks that look like object ids (see instance_masks)
    kept: bool = False  # every pair's decoded arrays are held in `samples`

    @property
    def alpha_dropped(self) -> float | None:
        """The constant alpha value left out of the model's input (see ModelMeta.alpha_dropped), or None."""
        return self.alpha.value if self.alpha is not None and self.alpha.dropped else None

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [s.shape[:2] for s in self.samples]

    @property
    def image_statistics(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each image's per-channel (mean, std) in [0, 1] units (doubt.training_intensity's input)."""
        return [(s.statistics[0], s.statistics[1]) for s in self.samples]

    @property
    def decoded_bytes(self) -> int:
        return sum(s.nbytes for s in self.samples)

    @property
    def unit_bytes(self) -> int:
        """Decoded size with the images as float32 in [0, 1] (what a training store in memory holds when it can)."""
        return sum(s.shape[0] * s.shape[1] * (4 * s.shape[2] + 1) for s in self.samples)


@dataclass
class _PairFigures:
    """What the pass keeps of a pair it does not keep decoded."""

    entry: ScannedPair
    sums: np.ndarray  # 2 x C: per-channel sum and sum of squares in [0, 1] units
    alpha: tuple[float, float] | None
    stats: MaskStats
    raw: RawMask | None = None  # kept decoded, or one of the first PLANNER_MASKS


def scan_dataset(pairs: list[Pair], **options) -> DatasetScan:
    """`iter_scan` run to its end (see there for the options)."""
    return drain(iter_scan(pairs, **options))


def drain(events: Generator):
    """Run a generator of progress events to its end; its return value."""
    while True:
        try:
            next(events)
        except StopIteration as end:
            return end.value


def iter_scan(pairs: list[Pair], *, mask_mode: str = "auto", ignore_value: int | None = None,
              class_map_file: Path | None = None, num_classes: int | None = None, class_map: ClassMap | None = None,
              in_channels: int | None = None, keep_bytes: float = 0) -> Generator[DataProgress, None, DatasetScan]:
    """Read every pair, collect every problem, infer (or apply) the class map and channel count; yields
    DataProgress, returns the DatasetScan. With `in_channels` (a model's, e.g. for validation) each image is fitted
    to it as predict fits its inputs. The decoded pairs are kept while their total stays within `keep_bytes`."""
    scan = DatasetScan(samples=[])
    figures = yield from _read_all(pairs, scan, in_channels, keep_bytes)
    if not figures or not _settle_channels(scan, figures, in_channels):
        return scan
    stats = [f.stats for f in figures]
    try:
        scan.class_map = class_map or infer_class_map(stats, mask_mode, ignore_value, class_map_file=class_map_file,
                                                        num_classes=num_classes)
    except DataError as err:
        scan.problems.append(str(err))
        return scan
    if class_map is None and class_map_file is None and mask_mode == "auto":
        signs = instance_signs(stats, ignore_value)
        scan.notes += [signs.note(scan.class_map.mode == "instances")] if signs.looks_like_ids else []
    _count_classes(scan, figures)
    if scan.in_channels is not None:
        scan.mean, scan.std = _channel_statistics(figures)
    return scan


def _read_all(pairs: list[Pair], scan: DatasetScan, in_channels: int | None,
              keep_bytes: float) -> Generator[DataProgress, None, list[_PairFigures]]:
    """Read the pairs in threads, in order; problems go to the scan, each readable pair's figures are returned."""
    figures: list[_PairFigures] = []
    total_bytes, dropped, start = 0, 0, time.monotonic()
    last = start
    for done, read in enumerate(threaded_map(lambda pair: _read_pair(pair, in_channels), pairs), 1):
        if isinstance(read, DataError):
            scan.problems.append(str(read))
        else:
            total_bytes += read.entry.nbytes
            figures.append(read)
            if total_bytes > keep_bytes:  # over the budget: nothing is kept but the planner's masks
                for index in range(dropped, len(figures)):
                    figures[index].entry.image = None
                    figures[index].raw = figures[index].raw if index < PLANNER_MASKS else None
                dropped = len(figures)
        if done == len(pairs) or time.monotonic() - last >= PROGRESS_SECONDS:
            last = time.monotonic()
            yield DataProgress("reading data", done, len(pairs), last - start)
    scan.samples = [f.entry for f in figures]
    scan.kept = bool(figures) and total_bytes <= keep_bytes
    return figures


SERIAL_BELOW = 0.5e-3  # seconds per item under which threads lose: measured on 2 cores, pairs of 64 px PNGs read at
# 6400/s in one thread and 5000/s in two (Python's share of the work holds the GIL), 512 px RGB pairs at 60/s in one
# and 130/s in two (decoding, which releases it)


def threaded_map(function, items, *, part: int = 16) -> Iterator:
    """`function` over `items`, results in order: the first `part` items in this thread, timed, then the rest in
    threads (as many as cores, at most 8) unless an item took under SERIAL_BELOW. Each task maps a run of `part`
    items (a task per item costs more in the executor's locks than a small PNG takes to decode); at most two tasks
    per thread are held ahead of the consumer."""
    started = time.perf_counter()
    yield from map(function, items[:part])
    threads = max(1, min(8, os.cpu_count() or 1))
    if threads == 1 or (time.perf_counter() - started) / max(1, min(part, len(items))) < SERIAL_BELOW:
        yield from map(function, items[part:])
        return

    def run(start: int) -> list:
        return [function(item) for item in items[start:start + part]]

    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for start in range(part, len(items), part):
            pending.append(pool.submit(run, start))
            if len(pending) > 2 * threads:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _read_pair(pair: Pair, in_channels: int | None) -> _PairFigures | DataError:
    """One pair's figures (with its decoded image and raw mask, which the caller drops unless kept)."""
    try:
        sample = read_sample(pair)
        image = sample.image if in_channels is None else match_channels(sample.image, in_channels, pair.image)
    except DataError as err:
        return err
    sums = channel_sums(image)
    mean, std = mean_and_std(sums, image.shape[0] * image.shape[1])
    entry = ScannedPair(pair, image.shape, str(image.dtype), image=image, statistics=np.stack([mean, std]))
    return _PairFigures(entry, sums, alpha_range(image), mask_stats(pair.mask, sample.raw_mask), sample.raw_mask)


def _settle_channels(scan: DatasetScan, figures: list[_PairFigures], in_channels: int | None) -> bool:
    """Set the model's channel count: `in_channels` (every image was fitted to it), or the images' common count,
    less an alpha channel that is one constant in every image. False when the images mix channel counts."""
    if in_channels is not None:
        scan.in_channels = in_channels
        return True
    channels: dict[int, list[str]] = {}
    for f in figures:
        channels.setdefault(f.entry.shape[2], []).append(f.entry.pair.image.name)
    if len(channels) > 1:
        common = max(channels, key=lambda c: len(channels[c]))
        odd = [f"{_short_list(names, 3)} ({c} channel{'' if c == 1 else 's'})" for c, names in channels.items() if c != common]
        scan.problems.append(
            f"images mix channel counts: most have {common}, but {'; '.join(odd)}; "
            "convert them all to the same (e.g. all gray or all RGB)"
        )
        return False
    scan.in_channels = next(iter(channels))
    if scan.in_channels == 4:
        scan.alpha = check_alpha([f.alpha for f in figures])
        if scan.alpha.dropped:
            for f in figures:
                f.sums, f.entry.shape, f.entry.statistics = f.sums[:, :3], (*f.entry.shape[:2], 3), f.entry.statistics[:, :3]
                if f.entry.image is not None:
                    f.entry.image = match_channels(f.entry.image, 3, f.entry.pair.image)
            scan.in_channels = 3
    return True


def _count_classes(scan: DatasetScan, figures: list[_PairFigures]) -> None:
    """Class pixels (from each mask's value counts, or its decoded pixels for instance masks), and the decoded
    masks of the pairs the scan kept (and of the planner's first few)."""
    class_map, counts = scan.class_map, np.zeros(256, np.int64)
    for f in figures:
        path = f.entry.pair.mask
        try:
            if f.raw is not None:
                f.entry.mask = class_map.decode(f.raw, path)
                if class_map.mode == "instances" and f.entry.image is not None:
                    f.entry.objects = object_ids(f.raw, class_map.ignore_value)
            if class_map.mode == "instances":
                mask = f.entry.mask if f.entry.mask is not None else decode_mask(f.entry.pair, f.entry.shape, class_map)
                counts += np.bincount(mask.ravel(), minlength=256)
            else:
                counts += _value_class_counts(class_map, f.stats)
        except DataError as err:
            scan.problems.append(str(err))
        f.raw = None
    scan.class_pixels = [int(c) for c in counts[: class_map.num_classes]]
    scan.ignored_pixels = int(counts[IGNORE_ID])


def _value_class_counts(class_map: ClassMap, stats: MaskStats) -> np.ndarray:
    """Pixels per class id of one mask, from its value counts: the values decoded as a one-row mask (so values
    that are no class raise the same DataError as decoding the whole mask)."""
    values = list(stats.counts)
    if stats.kind == "rgb":
        row = np.asarray(values, np.uint8).reshape(1, -1, 3)
    else:
        row = np.asarray(values, np.uint16 if stats.bits == 16 else np.uint8).reshape(1, -1)
    ids = class_map.decode(RawMask(row, stats.kind, stats.palette), stats.path)
    return np.bincount(ids.ravel(), weights=np.fromiter(stats.counts.values(), np.float64), minlength=256).astype(np.int64)


def decode_mask(pair: Pair, shape: tuple[int, ...], class_map: ClassMap) -> np.ndarray:
    """A pair's mask read again and decoded to class ids."""
    return class_map.decode(read_pair_mask(pair, shape), pair.mask)


def _channel_statistics(figures: list[_PairFigures]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units over all pixels of all images (normalisation constants), from
    each image's per-channel sums, added in pair order (so the figures do not depend on the threads)."""
    sums = sum(f.sums for f in figures)
    mean, std = mean_and_std(sums, sum(f.entry.shape[0] * f.entry.shape[1] for f in figures))
    std = np.where(std < 1e-6, 1.0, std)
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def require_clean(scan: DatasetScan, what: str) -> None:
    """Raise the first problem of a scan (with a count of the rest) for commands that cannot go on."""
    if scan.problems:
        rest = len(scan.problems) - 1
        suffix = f" (and {rest} more problem(s); run `unetcli check` on the {what} data to list them all)" if rest else ""
        raise DataError(scan.problems[0] + suffix)
    if not scan.samples:
        raise DataError(f"no readable image/mask pairs in the {what} data")
