"""Progress on stderr: a rich bar on a terminal, periodic plain lines or nothing otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from .._stats import ClientStats

__all__ = ["BarProgress", "PlainProgress", "ProgressReporter", "SilentProgress"]


class ProgressReporter:
    """The interface (and the silent implementation): told about every finished key."""

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def advance(self, failed: bool) -> None:
        """One more key finished (``failed``: without a task)."""

    def set_total(self, total: int | None) -> None:
        """The number of keys, once known."""

    def close(self) -> None:
        """Stop drawing; called once at the end."""


SilentProgress = ProgressReporter


class BarProgress(ProgressReporter):
    """A rich progress bar: done/total, rate, ETA, throttled and errors so far."""

    def __init__(
        self, console: Console, total: int | None, stats: Callable[[], ClientStats], label: str
    ) -> None:
        self._stats = stats
        self._errors = 0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("throttled {task.fields[throttled]}  errors {task.fields[errors]}"),
            console=console,
            transient=False,
        )
        self._task: TaskID = self._progress.add_task(
            label, total=total, rate="", throttled=0, errors=0
        )
        self._started = time.monotonic()
        self._done = 0
        self._progress.start()

    def advance(self, failed: bool) -> None:
        self._done += 1
        self._errors += failed
        elapsed = max(time.monotonic() - self._started, 1e-9)
        self._progress.update(
            self._task,
            advance=1,
            rate=f"{self._done / elapsed:.1f}/s",
            throttled=self._stats().throttled,
            errors=self._errors,
        )

    def set_total(self, total: int | None) -> None:
        self._progress.update(self._task, total=total)

    def close(self) -> None:
        self._progress.stop()


class PlainProgress(ProgressReporter):
    """One plain line every ``every`` seconds (for logs and CI, where a bar would be noise)."""

    def __init__(
        self,
        console: Console,
        total: int | None,
        stats: Callable[[], ClientStats],
        label: str,
        *,
        every: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._console = console
        self._total = total
        self._stats = stats
        self._label = label
        self._every = every
        self._clock = clock
        self._started = clock()
        self._next = self._started + every
        self._done = 0
        self._errors = 0

    def advance(self, failed: bool) -> None:
        self._done += 1
        self._errors += failed
        now = self._clock()
        if now >= self._next:
            self._next = now + self._every
            self._line(now)

    def set_total(self, total: int | None) -> None:
        self._total = total

    def close(self) -> None:
        if self._done:
            self._line(self._clock())

    def _line(self, now: float) -> None:
        total = "" if self._total is None else f"/{self._total}"
        rate = self._done / max(now - self._started, 1e-9)
        self._console.print(
            f"{self._label}: {self._done}{total} done, {rate:.1f}/s, "
            f"throttled {self._stats().throttled}, errors {self._errors}",
            markup=False,
            highlight=False,
        )
