"""Where training reads its decoded pairs from (`train --cache`): a store of (image, class ids) per pair.

- `ram`: every decoded pair held in memory (the scan keeps them as it reads).
- `none`: decoded on demand from the files, with a small LRU of recent pairs (bounded memory).
- `disk`: decoded once into RUN/cache/<train|val>/ as .npy arrays, read memory-mapped; a later run on the same
  files (`--resume`, or `--overwrite`) reuses them and skips reading the data at all.
- `auto`: `ram` when the decoded set fits MEMORY_SHARE of the available memory, else `none`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .channels import AlphaCheck, match_channels
from .data import Pair, read_sample
from .errors import OutputError, UsageError
from .images import to_unit_range
from .masks import ClassMap
from .options import CACHE_CHOICES
from .scan import DataProgress, DatasetScan, ScannedPair, threaded_map

MEMORY_SHARE = 0.5  # auto keeps the decoded set in RAM when it needs at most this share of the available memory
STREAM_CACHE_BYTES = 64 * 2**20  # decoded pairs a streaming store holds (LRU), at most
CACHE_FORMAT = 1
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclass(frozen=True)
class Decoded:
    """One pair as training reads it: the image in its stored dtype (channels as the model takes them) and the
    class ids; `objects` for instance masks."""

    image: np.ndarray
    mask: np.ndarray
    objects: np.ndarray | None = None


def parse_bytes(text: str, name: str = "UNETCLI_MEMORY_LIMIT") -> int:
    """'2G', '512M', '1.5GB', '1000000' -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text.upper())
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"{name}={text!r}: use a size such as 2G, 512M or a number of bytes (or unset it)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def proc_bytes(path: str, field: str) -> int | None:
    """A byte count from a Linux /proc file whose lines read `Field:   N kB` (meminfo, self/status); None where
    there is none."""
    try:
        with open(path, encoding="ascii") as lines:
            return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def available_memory() -> int:
    """Memory this process may fill: MemAvailable (Linux), else the free physical pages, capped by
    UNETCLI_MEMORY_LIMIT when set (which also lets tests pretend to have little memory)."""
    available = proc_bytes("/proc/meminfo", "MemAvailable")
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = None
    limit = os.environ.get("UNETCLI_MEMORY_LIMIT", "").strip()
    if limit:
        return min(parse_bytes(limit), available or parse_bytes(limit))
    return available if available is not None else 8 * 2**30  # unknown: assume a modest machine


def keep_budget(cache: str) -> float:
    """How many decoded bytes the scan may keep in memory for this --cache choice."""
    if cache not in CACHE_CHOICES:
        raise UsageError(f"--cache {cache!r}: use one of {', '.join(CACHE_CHOICES)}")
    return {"ram": float("inf"), "auto": MEMORY_SHARE * available_memory()}.get(cache, 0.0)


def stream_budget() -> int:
    """The decoded bytes a streaming store holds: STREAM_CACHE_BYTES, or less with little memory."""
    return int(min(STREAM_CACHE_BYTES, MEMORY_SHARE * available_memory()))


@dataclass(frozen=True)
class CachePlan:
    """What --cache chose and the memory it uses, printed before training."""

    requested: str
    train: str  # ram | none | disk
    val: str
    decoded_bytes: int  # the training and validation pairs decoded
    available: int | None = None  # auto: the available memory it compared against
    reused: bool = False  # disk: an earlier run's cache was valid and is read as it is
    folder: str = ""  # disk: RUN/cache
    memory_bytes: int = 0  # decoded pairs held in this process's memory (disk: none, the OS pages them in and out)
    unit: bool = False  # ram: the training images are held as float32 in [0, 1] (they fit MEMORY_SHARE that way)

    def describe(self) -> str:
        size = format_bytes(self.decoded_bytes)
        why = ""
        if self.requested == "auto":
            verb = "fit" if self.train == "ram" else "exceed"
            why = f" (auto: {size} decoded {verb} {MEMORY_SHARE:.0%} of {format_bytes(self.available or 0)} available memory)"
        if self.train == "ram":
            how = f"the decoded pairs held in memory, {format_bytes(self.memory_bytes)}"
            how += " (training images as float32, scaled once)" if self.unit else ""
        elif self.train == "none":
            how = f"streaming, pairs decoded on demand, at most {format_bytes(self.memory_bytes)} of them held"
        else:
            how = (f"{size} of decoded arrays in {self.folder}, memory-mapped"
                   f"{', reused from an earlier run' if self.reused else ''}; --resume reuses them")
        val = f"; validation: {self.val}" if self.val != self.train and self.val else ""
        return f"{self.train}{why}: {how}{val}"


def format_bytes(count: float) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def decode_pair(pair: Pair, class_map: ClassMap, in_channels: int) -> Decoded:
    """Read and decode one pair as training reads it (the same steps as the scan)."""
    from .instance_masks import object_ids

    sample = read_sample(pair)
    image = match_channels(sample.image, in_channels, pair.image)
    objects = object_ids(sample.raw_mask, class_map.ignore_value) if class_map.mode == "instances" else None
    return Decoded(image, class_map.decode(sample.raw_mask, pair.mask), objects)


class RamStore:
    """The decoded pairs the scan kept; with `unit`, the images scaled to float32 in [0, 1] once (4 bytes a value,
    but no scaling of the whole image for every crop drawn: 2 ms at 512 x 512 RGB, 18 ms at 2048 x 2048)."""

    in_memory = True

    def __init__(self, samples: list[ScannedPair], *, unit: bool = False):
        self.samples = [Decoded(to_unit_range(s.image) if unit else s.image, s.mask, s.objects) for s in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Decoded:
        return self.samples[index]

    def __iter__(self) -> Iterator[Decoded]:
        return iter(self.samples)


class StreamStore:
    """Pairs decoded on demand, the most recently used kept up to `budget` bytes (each DataLoader worker holds
    its own). Iterating decodes ahead in threads (validation)."""

    in_memory = False

    def __init__(self, pairs: list[Pair], class_map: ClassMap, in_channels: int, *, budget: int | None = None):
        self.pairs, self.class_map, self.in_channels = pairs, class_map, in_channels
        self.budget = stream_budget() if budget is None else budget
        self.recent: OrderedDict[int, Decoded] = OrderedDict()
        self.held = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> Decoded:
        return decode_pair(self.pairs[index], self.class_map, self.in_channels)

    def __getitem__(self, index: int) -> Decoded:
        if index in self.recent:
            self.recent.move_to_end(index)
            return self.recent[index]
        sample = self.load(index)
        self.recent[index] = sample
        self.held += _nbytes(sample)
        while self.held > self.budget and len(self.recent) > 1:
            self.held -= _nbytes(self.recent.popitem(last=False)[1])
        return sample

    def __iter__(self) -> Iterator[Decoded]:
        from .predict import prefetch

        with ThreadPoolExecutor(2) as pool:
            yield from prefetch(pool, self.load, range(len(self)), depth=4, size_of=_nbytes, budget=self.budget // 4)

    def __getstate__(self):  # a DataLoader worker starts with an empty LRU of its own
        return {**self.__dict__, "recent": OrderedDict(), "held": 0}


def _nbytes(sample: Decoded) -> int:
    return sample.image.nbytes + sample.mask.nbytes + (sample.objects.nbytes if sample.objects is not None else 0)


class DiskStore(StreamStore):
    """Pairs decoded once into `folder` (NNNNNN-image.npy, -mask.npy, -objects.npy), read memory-mapped."""

    def __init__(self, folder: Path, count: int):
        self.folder, self.count, self.budget = Path(folder), count, STREAM_CACHE_BYTES

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> Decoded:
        stem = self.folder / f"{index:06d}"
        objects = Path(f"{stem}-objects.npy")
        return Decoded(np.load(f"{stem}-image.npy", mmap_mode="r"), np.array(np.load(f"{stem}-mask.npy", mmap_mode="r")),
                       np.array(np.load(objects)) if objects.exists() else None)

    __getitem__ = load

    def __getstate__(self):
        return self.__dict__


def data_fingerprint(pairs: list[Pair], settings: dict) -> str:
    """What a disk cache was made from: each pair's file names, sizes and modification times, and the options that
    decide how masks decode. A change to any file or option makes the cache stale."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for pair in pairs:
        for path in (pair.image, pair.mask):
            stat = path.stat()
            digest.update(f"{pair.stem}|{path}|{stat.st_size}|{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:24]


def reuse_scan(folder: Path, fingerprint: str, pairs: list[Pair]) -> DatasetScan | None:
    """The scan an earlier run stored with its disk cache, when the cache is complete and was made from the same
    files with the same options; else None."""
    try:
        index = json.loads((Path(folder) / "index.json").read_text(encoding="utf-8"))
        if index.get("format") != CACHE_FORMAT or index.get("fingerprint") != fingerprint or index["count"] != len(pairs):
            return None
        summary = index["scan"]
        statistics = np.load(Path(folder) / "statistics.npy")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    alpha = AlphaCheck(**{**summary["alpha"], "values": tuple(summary["alpha"]["values"])}) if summary["alpha"] else None
    samples = [ScannedPair(pair, tuple(shape), dtype, statistics=stats)
               for pair, (shape, dtype), stats in zip(pairs, summary["samples"], statistics)]
    return DatasetScan(samples, class_map=ClassMap.from_dict(summary["class_map"]), in_channels=summary["in_channels"],
                       class_pixels=summary["class_pixels"], ignored_pixels=summary["ignored_pixels"],
                       mean=tuple(summary["mean"]), std=tuple(summary["std"]), alpha=alpha, notes=summary["notes"])


def _summary(scan: DatasetScan) -> dict:
    return {"class_map": scan.class_map.to_dict(), "in_channels": scan.in_channels, "class_pixels": scan.class_pixels,
            "ignored_pixels": scan.ignored_pixels, "mean": list(scan.mean), "std": list(scan.std),
            "alpha": asdict(scan.alpha) if scan.alpha else None, "notes": scan.notes,
            "samples": [[list(s.shape), s.dtype] for s in scan.samples]}


def build_disk_store(folder: Path, scan: DatasetScan, fingerprint: str, *,
                     what: str = "caching data") -> Generator[DataProgress, None, DiskStore]:
    """Decode every pair of `scan` into `folder` (a temporary sibling, renamed when complete), or reuse it when it
    holds this data already. Yields DataProgress."""
    folder, count = Path(folder), len(scan.samples)
    if reuse_scan(folder, fingerprint, [s.pair for s in scan.samples]) is not None:
        return DiskStore(folder, count)
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    if scan.decoded_bytes > free:
        raise OutputError(f"{folder}: the disk cache needs {format_bytes(scan.decoded_bytes)} but only {format_bytes(free)} "
                          "are free there; free space, choose another -o, or use --cache none")
    temporary = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        yield from _write_arrays(temporary, scan, what)
        np.save(temporary / "statistics.npy", np.stack([s.statistics for s in scan.samples]))
        index = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "count": count, "scan": _summary(scan)}
        (temporary / "index.json").write_text(json.dumps(index), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        temporary.rename(folder)
    except OSError as err:
        shutil.rmtree(temporary, ignore_errors=True)
        raise OutputError(f"{folder}: cannot write the disk cache ({err.strerror or err}); free space or use --cache none") from None
    return DiskStore(folder, count)


def _write_arrays(folder: Path, scan: DatasetScan, what: str) -> Generator[DataProgress, None, None]:
    source = StreamStore([s.pair for s in scan.samples], scan.class_map, scan.in_channels)

    def write(index: int) -> None:
        sample = source.load(index)
        np.save(folder / f"{index:06d}-image.npy", sample.image)
        np.save(folder / f"{index:06d}-mask.npy", sample.mask)
        if sample.objects is not None:
            np.save(folder / f"{index:06d}-objects.npy", sample.objects)

    count, start = len(source), time.monotonic()
    for done, _ in enumerate(threaded_map(write, range(count)), 1):
        if done == count or done % 64 == 0:
            yield DataProgress(what, done, count, time.monotonic() - start)


def default_workers(device_type: str, streaming: bool) -> int:
    """DataLoader workers when --workers is not given: 4 on a GPU; on a CPU none (they compete with torch's own
    threads), except that a streaming store on a CPU of 8+ cores decodes in 2 workers."""
    if device_type == "cuda":
        return 4
    return 2 if streaming and (os.cpu_count() or 1) >= 8 else 0
