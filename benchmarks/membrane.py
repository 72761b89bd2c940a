"""The ISBI 2012 membrane data beside the repository, and the train/test split the benchmarks share."""

from __future__ import annotations

from pathlib import Path

MEMBRANE = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "membrane"
TRAIN_SLICES = range(25)  # training never sees TEST_SLICES
TEST_SLICES = range(25, 30)


def link_slices(folder: Path, slices=TRAIN_SLICES, source: Path = MEMBRANE) -> Path:
    """folder/images and folder/masks holding symlinks to the given slices (kept where they already are); returns folder."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for i in slices:
            target = (source / sub / f"{i}.png").resolve()
            if not target.exists():
                raise FileNotFoundError(target)
            link = folder / sub / f"{i}.png"
            if link.is_symlink() and link.resolve() == target:
                continue  # a work folder reused by a later run
            link.unlink(missing_ok=True)
            link.symlink_to(target)
    return folder
