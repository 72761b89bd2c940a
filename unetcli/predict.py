"""Batch prediction: `predict_files` streams results, one per input. Decoding runs ahead in a thread pool and
writing runs behind, so disk work overlaps with the network; same-size images share forward passes.

The engine is predictor.py, the input arguments inputs.py, and each input's output files outputs.py.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .doubt import PixelDoubt, image_doubt
from .errors import DataError, UnetcliError
from .images import read_image
from .inputs import select_shard
from .outputs import (
    PredictOptions,
    PredictResult,
    check_collisions,
    check_objects,
    check_save_kinds,
    listed_outputs,
    output_paths,
    prepare_out_dir,
    write_objects_table,
    write_outputs,
)
from .predictor import AUTO_BATCH, Predictor, match_channels
from .review import ReviewSheet, review_thumbnail
from .stack_outputs import predict_stack
from .stacks import page_count

PREFETCH_BYTES = 256 * 2 ** 20  # decoded images held ahead of the network: at most this much (but at least one image)


def _read(path: Path):
    try:
        return read_image(path), None
    except UnetcliError as err:
        return None, err


def prefetch(executor, function, items: list, *, depth: int, size_of=None, budget: int = PREFETCH_BYTES) -> Iterator:
    """Like executor.map, but at most `depth` results are held ahead of the consumer (bounded memory), and with
    `size_of(result)` (bytes) only as many as fit `budget` at the size of the latest result, at least one: huge
    images are decoded one ahead, small ones `depth` ahead."""
    queue: deque = deque()
    iterator = iter(items)
    ahead = depth if size_of is None else min(depth, 2)  # sizes are unknown until the first result
    for item in itertools.islice(iterator, ahead):
        queue.append(executor.submit(function, item))
    while queue:
        result = queue.popleft().result()
        if size_of is not None:
            ahead = max(1, min(depth, budget // max(1, size_of(result))))
        for item in itertools.islice(iterator, max(0, ahead - len(queue))):
            queue.append(executor.submit(function, item))
        yield result


def predict_files(predictor: Predictor, paths: list[Path], options: PredictOptions) -> Iterator[PredictResult]:
    """Predict every path; a failing input yields an error result and the batch goes on. With --save instances,
    OUT/objects.csv is rebuilt once every input is done (objects are labelled per image in the write-behind); with
    --review N, OUT/review.png and review.txt are written then (review.py)."""
    sheet = ReviewSheet(options.review) if options.review else None
    for result in _predict_all(predictor, paths, options):
        if sheet is not None:
            sheet.offer(result)
            result.thumbnail = None  # the sheet holds what it keeps
        yield result
    if sheet is not None:
        sheet.write(options.out_dir)


def _predict_all(predictor: Predictor, paths: list[Path], options: PredictOptions) -> Iterator[PredictResult]:
    check_save_kinds(options.save)
    check_objects(predictor, options)
    paths = select_shard(paths, options.shard)
    targets = {path: output_paths(path, options, predictor.probability_channels) for path in paths}
    check_collisions(targets)
    prepare_out_dir(options.out_dir, objects="instances" in options.save)
    done = {path for path in paths if options.skip_existing and all(t.exists() for t in targets[path].values())}
    for path in paths:
        if path in done:
            yield PredictResult(path, "skipped", listed_outputs(targets[path]))
    todo = [path for path in paths if path not in done]
    stacked = {path for path in todo if page_count(path) > 1}  # TIFF stacks: page by page into output stacks
    yield from _predict_batches(predictor, [path for path in todo if path not in stacked], options)
    yield from (predict_stack(predictor, path, options) for path in todo if path in stacked)
    if "instances" in options.save:
        write_objects_table(options.out_dir)


def _predict_batches(predictor: Predictor, todo: list[Path], options: PredictOptions) -> Iterator[PredictResult]:
    """Same-size images go through the network together (up to images_per_forward), images that need tiles alone."""
    with_probs = "probs" in options.save or "instances" in options.save  # instances: each object's mean probability
    io_threads = max(2, min(8, (os.cpu_count() or 2) // 2))  # OpenCV decodes and encodes without the GIL
    with ThreadPoolExecutor(max_workers=io_threads) as readers, ThreadPoolExecutor(max_workers=io_threads) as writers:
        depth = 2 * (predictor.batch_size or AUTO_BATCH)
        decoded = prefetch(readers, _read, todo, depth=depth,  # runs ahead of the network
                           size_of=lambda read: read[0].nbytes if read[0] is not None else 0)
        pending: list = []  # (path, image) of one size, waiting to fill a batch
        writes: list = []

        def write(path: Path, image, ids, probs, counted) -> None:
            writes.append(writers.submit(_write, predictor, path, image, ids=ids, probs=probs, counted=counted,
                                         options=options))

        def flush():
            ids, probs, counted = predictor.predict_batch_doubt([image for _, image in pending], with_probs)
            for i, (path, image) in enumerate(pending):
                write(path, image, ids[i], None if probs is None else probs[i], counted[i])
            pending.clear()

        for path, (image, error) in zip(todo, decoded):
            if error is not None:
                yield PredictResult(path, "error", error=str(error), exit_code=error.exit_code)
                continue
            try:
                image = match_channels(image, predictor.in_channels, path)
            except DataError as err:
                yield PredictResult(path, "error", error=str(err), exit_code=err.exit_code)
                continue
            if predictor.needs_tiles(image):
                write(path, image, *predictor.predict_image_doubt(image, path, with_probs))
            else:
                if pending and (pending[0][1].shape != image.shape or len(pending) >= predictor.images_per_forward(*image.shape[:2])):
                    flush()
                pending.append((path, image))
            # yield finished writes; wait for them when too many masks would pile up in memory
            held = depth if image.nbytes < PREFETCH_BYTES // 2 else 1  # huge images: one write behind
            while writes and (writes[0].done() or len(writes) > held):
                yield writes.pop(0).result()
        if pending:
            flush()
        for future in writes:
            yield future.result()


def _write(predictor: Predictor, path: Path, image, *, ids, probs, counted: PixelDoubt,
           options: PredictOptions) -> PredictResult:
    """write_outputs, then the image's doubt (and with --review its overlay thumbnail), in the write-behind thread."""
    result = write_outputs(predictor, path, image, ids=ids, probs=probs, options=options)
    if result.status == "ok":
        result.doubt = image_doubt(counted, image, predictor.intensity)
        if options.review:
            result.thumbnail = review_thumbnail(image, ids, predictor.class_map.overlay_colours, options.overlay_alpha)
    return result
