"""Predicting a TIFF stack (stacks.py) page by page into output stacks of as many pages: mask, colour, overlay,
probabilities and instances, each a multi-page TIFF written to a hidden temporary sibling and renamed into place
once its last page is in. One page is decoded, predicted and written at a time, so memory is bounded by a page."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .channels import match_channels
from .errors import OutputError, UnetcliError
from .geotiff import GeoTags, page_options
from .images import write_bytes_atomic
from .instances import label_instances, object_classes, object_rows
from .outputs import PredictOptions, PredictResult, csv_bytes, finished, output_page, output_paths
from .stacks import Stack, page_label

if TYPE_CHECKING:
    from .predictor import Predictor

CLASSIC_TIFF_BYTES = 2 ** 31  # above this many uncompressed bytes an output stack is written as BigTIFF


class StackFile:
    """One output stack, written page by page: `append` each page, then `commit` (rename into place) or `discard`."""

    def __init__(self, target: Path, *, bigtiff: bool):
        import tifffile

        self.target = target
        self.temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            self._writer = tifffile.TiffWriter(self.temporary, bigtiff=bigtiff)
        except OSError as err:
            raise self._failed(err) from None

    def _failed(self, err: OSError) -> OutputError:
        return OutputError(f"{self.target}: cannot write ({err.strerror or err}); check free space and permissions")

    def append(self, array: np.ndarray, palette: tuple[int, ...] | None = None, tags: GeoTags = ()) -> None:
        try:
            self._writer.write(array, **page_options(array, palette, tags))
        except OSError as err:
            raise self._failed(err) from None

    def commit(self) -> None:
        try:
            self._writer.close()
            os.replace(self.temporary, self.target)
        except OSError as err:
            self.discard()
            raise self._failed(err) from None

    def discard(self) -> None:
        with contextlib.suppress(Exception):  # already failing: the temporary file goes either way
            self._writer.close()
        self.temporary.unlink(missing_ok=True)


def predict_stack(predictor: Predictor, path: Path, options: PredictOptions) -> PredictResult:
    """Predict every page of the stack at `path` and write its output stacks (see outputs.output_paths); a failure
    leaves no output of this input and gives an error result. Objects (--save instances) are labelled per page:
    ids start at 1 on every page, and OUT/objects.csv names each object's page as `<input>[<page>]`."""
    targets = output_paths(path, options, predictor.probability_channels)
    files: dict[str, StackFile] = {}
    try:
        with Stack(path) as stack:
            pages = len(stack)
            bigtiff = pages * math.prod(stack.size) * 4 > CLASSIC_TIFF_BYTES
            for kind, target in targets.items():
                if kind != "objects":
                    files[kind] = StackFile(target, bigtiff=bigtiff)
            counts, objects, rows = _predict_pages(predictor, stack, files, options)
        if "objects" in targets:  # the rows first: a label stack in OUT implies its rows (see write_objects_table)
            write_bytes_atomic(targets["objects"], csv_bytes(rows))
        for file in files.values():
            file.commit()
    except UnetcliError as err:
        for file in files.values():
            file.discard()
        return PredictResult(path, "error", error=str(err), exit_code=err.exit_code)
    return finished(path, predictor.class_map, counts, targets, objects, pages=pages)


def _predict_pages(predictor: Predictor, stack: Stack, files: dict[str, StackFile],
                   options: PredictOptions) -> tuple[np.ndarray, dict[str, int] | None, list[dict]]:
    """Each page through the network and onto every output stack; returns the predicted pixels per class, the
    objects per object class (None without --save instances) and the objects' rows for objects.csv."""
    class_map = predictor.class_map
    with_probs = "probs" in options.save or "instances" in options.save
    counts = np.zeros(class_map.num_classes, np.int64)
    objects: dict[str, int] | None = {} if "instances" in files else None
    rows: list[dict] = []
    for page in range(len(stack)):
        label = page_label(stack.path, page)
        image = match_channels(stack.image(page), predictor.in_channels, label)
        ids, probs = predictor.predict_image_maps(image, label, with_probs)
        counts += np.bincount(ids.ravel(), minlength=class_map.num_classes)
        for kind, file in files.items():
            if kind == "instances":
                found = label_instances(ids, class_map, options.instances)
                rows += object_rows(found, class_map, probs, f"{stack.path}[{page}]")
                for name, count in found.counts(class_map, object_classes(class_map, options.instances.objects)).items():
                    objects[name] = objects.get(name, 0) + count
                file.append(found.image(), tags=stack.geo_tags)
            else:
                file.append(*output_page(kind, predictor, image, ids, probs, options), tags=stack.geo_tags)
    return counts, objects, rows
