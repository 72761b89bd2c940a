"""What `predict` reads: the input arguments resolved to image paths, and this process's shard of them."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from .errors import UsageError
from .images import is_image_file


def resolve_inputs(inputs: Iterable[str], *, stdin: TextIO) -> list[Path]:
    """Files, folders (their image files), globs, @list.txt files and '-' (paths read from `stdin`), in order.
    A folder's entries named like images that cannot be read (a dangling symlink, a folder `x.png/`) are kept,
    so that predict reports each as a failed input rather than skipping it without a word."""
    paths: list[Path] = []
    for item in inputs:
        if item == "-":
            paths += [Path(line.strip()) for line in stdin if line.strip()]
        elif item.startswith("@"):
            list_file = Path(item[1:])
            try:
                lines = list_file.read_text(encoding="utf-8").splitlines()
            except OSError as err:
                raise UsageError(f"{list_file}: cannot read the list file ({err.strerror})") from None
            paths += [Path(line.strip()) for line in lines if line.strip() and not line.startswith("#")]
        elif Path(item).is_dir():
            from .data import list_image_files

            paths += list_image_files(Path(item), keep_unreadable=True)  # reported as failed inputs when read
        elif any(ch in item for ch in "*?[") and not Path(item).exists():
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise UsageError(f"{item}: the pattern matches no files")
            paths += [Path(m) for m in matches if is_image_file(Path(m))]
        else:
            paths.append(Path(item))
    if not paths:
        raise UsageError("no input images given (files, folders, globs, @list.txt or - for stdin)")
    return paths


def parse_shard(shard: str | None) -> tuple[int, int]:
    if not shard:
        return 1, 1
    try:
        k, n = (int(part) for part in shard.split("/"))
    except ValueError:
        raise UsageError(f"--shard {shard!r}: use K/N, e.g. 1/4 for the first of four shards") from None
    if not 1 <= k <= n:
        raise UsageError(f"--shard {shard!r}: K must be between 1 and N")
    return k, n


def select_shard(paths: list[Path], shard: tuple[int, int]) -> list[Path]:
    k, n = shard
    return paths[k - 1 :: n]
