"""Plain progress lines for logs: when stderr goes to a file or a pipe, long work says how it goes at a steady
pace (`UNETCLI_PROGRESS_SECONDS`, default 30), the first line early. A terminal gets Rich bars instead."""

from __future__ import annotations

import os
import sys
import time

from ..errors import UsageError
from .app import duration, err_console

DEFAULT_SECONDS = 30.0


def plain_progress(quiet: bool) -> bool:
    """Plain lines when stderr is a file or a pipe (`2> train.log`, `| tee`). A terminal gets Rich bars, and a
    stream held in memory (a test runner's or a host program's capture) only the messages and results."""
    if quiet or err_console.is_terminal:
        return False
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def progress_seconds() -> float:
    value = os.environ.get("UNETCLI_PROGRESS_SECONDS", "").strip()
    if not value:
        return DEFAULT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise UsageError(f"UNETCLI_PROGRESS_SECONDS={value!r}: use a number of seconds above 0, e.g. 30 (or unset it)")
    return seconds


def plain(line: str) -> None:
    """One line on stderr, never wrapped, brackets kept."""
    err_console.print(line, soft_wrap=True, markup=False, highlight=False)


class Ticker:
    """When the next line is due: at the first call, then once `progress_seconds()` have passed."""

    def __init__(self) -> None:
        self.interval = progress_seconds()
        self.last: float | None = None

    def due(self) -> bool:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.interval:
            return False
        self.last = now
        return True


class CountLog:
    """Lines of `what: done/total images, images/s, time left` for predict and evaluate (total may be unknown)."""

    def __init__(self, what: str, total: int | None) -> None:
        self.what, self.total = what, total
        self.ticker, self.start, self.first = Ticker(), time.monotonic(), 0.0
        self.done = self.counted = 0

    def advance(self, *, counted: bool = True) -> None:
        """One input finished; `counted=False` (a skipped input) leaves it out of the speed."""
        self.done += 1
        self.counted += counted
        if not counted:
            return
        now = time.monotonic()
        if self.counted == 1:
            self.first = now  # the speed is measured from here on: the first input also paid for loading the model
        if not self.ticker.due():
            return
        rate = 1 / max(now - self.start, 1e-6) if self.counted == 1 else (self.counted - 1) / max(now - self.first, 1e-6)
        if self.total:
            plain(f"{self.what}: {self.done}/{self.total} images, {rate:.2f} images/s, {duration((self.total - self.done) / rate)} left")
        else:
            plain(f"{self.what}: {self.done} image{'' if self.done == 1 else 's'} done, {rate:.2f} images/s")


class TrainingLog:
    """Plain lines for a training run: one as each phase starts, and at the ticker's pace one with the step, the
    loss, the speed and the time left in the epoch and the run (epochs left x the epoch time, or the time limit)."""

    def __init__(self) -> None:
        self.ticker = Ticker()
        self.ready = None  # the run's DataReady
        self.run_start: float | None = None  # when this process's first step began
        self.epoch_start: float | None = None
        self.epoch_seconds: list[float] = []  # whole epochs of this process: steps, validation, saving
        self.data_done = 0  # pairs done in the data pass going on
        self.data_ticker = Ticker()

    def show(self, event) -> None:
        from ..scan import DataProgress
        from ..training import BatchDone, DataReady, EpochDone, Phase

        if isinstance(event, DataProgress):
            self._data(event)
        elif isinstance(event, Phase) and event.name == "reading data":
            plain(f"reading data: {event.detail} (pairing, decoding and scanning every image)")
        elif isinstance(event, Phase):
            plain(f"epoch {event.epoch}: {event.name} {event.detail}")
        elif isinstance(event, DataReady):
            self.ready = event
        elif isinstance(event, BatchDone):
            self._batch(event)
        elif isinstance(event, EpochDone) and self.epoch_start is not None:
            self.epoch_seconds.append(time.monotonic() - self.epoch_start)

    def _data(self, event) -> None:
        """`reading data: done/total pairs, pairs/s, time left` (or `caching data`), and once at the end."""
        if event.done < self.data_done:  # a new pass (the validation pairs, the disk cache): its first line early
            self.data_ticker = Ticker()
        self.data_done = event.done
        if not self.data_ticker.due() and event.done < event.total:
            return
        rate = event.done / max(event.seconds, 1e-6)
        plain(f"{event.what}: {event.done}/{event.total} pairs, {rate:.0f} pairs/s, {duration((event.total - event.done) / max(rate, 1e-6))} left")

    def _batch(self, event) -> None:
        now = time.monotonic()
        if event.step == 1 or self.epoch_start is None:
            self.epoch_start = now - event.seconds
            self.run_start = self.run_start or self.epoch_start
        if not self.ticker.due():
            return
        ready, step_time = self.ready, event.seconds / event.step
        epoch_left = (event.steps - event.step) * step_time
        per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else event.steps * step_time
        run_left, limited = epoch_left + (ready.epochs - event.epoch) * per_epoch, ""
        if ready.time_limit and ready.time_limit - (now - self.run_start) < run_left:
            run_left, limited = ready.time_limit - (now - self.run_start), " (time limit)"
        rate = event.step * ready.images_per_step / max(event.seconds, 1e-6)
        plain(f"epoch {event.epoch}/{ready.epochs}, step {event.step}/{event.steps}, loss {event.loss:.4f}, "
              f"{rate:.1f} images/s, left: epoch {duration(epoch_left)}, run {duration(run_left)}{limited}")
