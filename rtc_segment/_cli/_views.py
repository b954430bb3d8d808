"""Human-readable views: one task (``get`` on a terminal) and the end-of-run summary."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

import attrs
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .._models import SegmentTask, StorageConfig, StorageType, TaskKey, TaskStatus
from .._stats import ClientStats

__all__ = ["Tally", "action_confirmation", "summary_view", "task_view"]

_STATUS_STYLE = {
    TaskStatus.RUNNING: "bold green",
    TaskStatus.ENDED: "bold blue",
    TaskStatus.FAILED: "bold red",
    TaskStatus.NOT_STARTED: "yellow",
}
_NONE = Text("-", style="dim")


def _format_time(moment: datetime | None) -> RenderableType:
    if moment is None:
        return _NONE
    local = moment.astimezone()
    utc = moment.astimezone(UTC)
    return Text.assemble(
        local.strftime("%Y-%m-%d %H:%M:%S %Z"),
        (f"  ({utc.strftime('%Y-%m-%d %H:%M:%S')} UTC)", "dim"),
    )


def format_duration(seconds: float) -> str:
    """``3h 02m 05s`` style; ``0s`` for zero, never negative."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _elapsed(task: SegmentTask, now: datetime) -> RenderableType:
    started, ended = task.started_at, task.ended_at
    if started is None:
        return _NONE
    if ended is not None:
        return Text(format_duration((ended - started).total_seconds()))
    return Text.assemble(format_duration((now - started).total_seconds()), (" so far", "dim"))


def _streams(task: SegmentTask) -> RenderableType:
    streams = task.target_streams.stream_list if task.target_streams else ()
    if not streams:
        return Text("every stream in the room")
    return Text(
        "\n".join(
            f"#{stream.index} {stream.user_id} ({stream.stream_type.name.lower()})"
            for stream in streams
        )
    )


def _storage(config: StorageConfig | None) -> RenderableType:
    if config is None:
        return _NONE
    kind = config.type
    where: str | None = None
    if kind is StorageType.TOS and config.tos_config is not None:
        where = f"bucket {config.tos_config.bucket}, region {config.tos_config.region}"
    elif kind is StorageType.VOD and config.vod_config is not None:
        where = f"space {config.vod_config.space}, region {config.vod_config.region}"
    elif kind is StorageType.CUSTOM and config.custom_config is not None:
        custom = config.custom_config
        where = f"{custom.vendor.name} bucket {custom.bucket}, region {custom.region}"
    elif kind is StorageType.VEIMAGEX and config.veimagex_config is not None:
        where = f"service {config.veimagex_config.service_id}"
    return Text(kind.name + (f": {where}" if where else ""))


def _optional(value: object, unit: str = "") -> RenderableType:
    return _NONE if value is None else Text(f"{value}{unit}")


def task_view(key: TaskKey, task: SegmentTask, *, now: datetime | None = None) -> RenderableType:
    """A two-column summary of ``task``: status, times (local and UTC), streams, storage."""
    now = now or datetime.now(UTC)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Task", Text(f"{key.app_id} / {key.room_id} / {key.task_id}"))
    grid.add_row("Status", Text(task.status.name, style=_STATUS_STYLE.get(task.status, "")))
    grid.add_row("Stop reason", _NONE if task.stop_reason is None else Text(task.stop_reason.value))
    grid.add_row("Started", _format_time(task.started_at))
    grid.add_row("Ended", _format_time(task.ended_at))
    grid.add_row("Duration", _elapsed(task, now))
    grid.add_row("Streams", _streams(task))
    grid.add_row("Storage", _storage(task.storage_config))
    grid.add_row("Slice length", _optional(task.duration, " s"))
    grid.add_row("Max idle time", _optional(task.max_idle_time, " s"))
    grid.add_row("Identifier", _optional(task.identifier))
    control = task.control
    if control is not None:
        flags = ", ".join(
            f"{name}={'yes' if value else 'no'}"
            for name, value in (
                ("align", control.align),
                ("mixed", control.mixed),
                ("ignore_silence", control.ignore_silence),
            )
        )
        grid.add_row("Control", Text(f"{flags}, redundant {control.redundant_duration} ms"))
    return grid


def action_confirmation(action: str, done: str, key: TaskKey) -> RenderableType:
    """One line confirming a start/update/stop: ``✓ started app / room / task (StartSegment)``."""
    return Text.assemble(
        ("✓ ", "bold green"),
        f"{done} {key.app_id} / {key.room_id} / {key.task_id}",
        (f" ({action})", "dim"),
    )


@attrs.define
class Tally:
    """What a run produced, counted as outcomes arrive: the basis of the summary and exit code."""

    qps: float
    """The ceiling the run was paced at."""
    by_status: Counter[str] = attrs.field(factory=Counter)
    errors: Counter[str] = attrs.field(factory=Counter)
    started: float = attrs.field(factory=time.monotonic)
    finished: float | None = None
    interrupted: bool = False

    def task(self, task: SegmentTask) -> None:
        """Count a fetched task."""
        self.by_status[task.status.name] += 1

    def error(self, kind: str) -> None:
        """Count a key that failed, by error class (or ``InputError``)."""
        self.errors[kind] += 1

    def finish(self) -> None:
        """Stop the clock."""
        self.finished = time.monotonic()

    @property
    def succeeded(self) -> int:
        """Keys that got a task."""
        return sum(self.by_status.values())

    @property
    def failed(self) -> int:
        """Keys (or input lines) that did not."""
        return sum(self.errors.values())

    @property
    def elapsed(self) -> float:
        """Seconds from start to finish (or to now, while running)."""
        end = time.monotonic() if self.finished is None else self.finished
        return max(end - self.started, 1e-9)


def summary_view(
    title: str,
    tally: Tally,
    stats: ClientStats,
    *,
    extra: list[tuple[str, str, str]] | None = None,
) -> RenderableType:
    """The end-of-run table: keys by status, errors by class, requests, achieved rate.

    ``extra`` rows are ``(label, value, note)``."""
    table = Table(title=title, box=None, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    total = tally.succeeded + tally.failed
    table.add_row("keys", str(total), "interrupted" if tally.interrupted else "")
    for status, count in sorted(tally.by_status.items(), key=lambda item: -item[1]):
        style = (
            _STATUS_STYLE.get(TaskStatus[status], "") if status in TaskStatus.__members__ else ""
        )
        table.add_row(Text(f"  {status}", style=style), str(count), "")
    for kind, count in sorted(tally.errors.items(), key=lambda item: -item[1]):
        table.add_row(Text(f"  {kind}", style="red"), str(count), "")
    rate = stats.requests_sent / tally.elapsed
    table.add_row("requests", str(stats.requests_sent), f"{stats.retries} retries")
    table.add_row(
        "achieved",
        f"{rate:.1f}/s",
        f"ceiling {tally.qps:g}/s, {rate / tally.qps:.0%} over {tally.elapsed:.1f} s",
    )
    table.add_row("throttled", str(stats.throttled), "")
    for label, value, note in extra or ():
        table.add_row(label, value, note)
    return Group(Text(""), table)
