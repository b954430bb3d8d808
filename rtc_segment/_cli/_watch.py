"""``watch``: one JSON line per change until every task has ended (or Ctrl-C)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from datetime import UTC, datetime

import attrs

from .._client import SegmentClient
from .._models import SegmentTask, TaskKey
from .._watch import WatchEvent
from ._commands import KeyLines, exit_status, parsed_input, progress_for
from ._context import Context, make_client, open_input, run_until_interrupted
from ._progress import ProgressReporter
from ._records import dumps, error_dict, key_record
from ._terminal import Terminal
from ._views import Tally, summary_view

__all__ = ["WatchLedger", "command_watch", "watch_keys"]


def event_record(line: int | None, event: WatchEvent) -> dict[str, object]:
    """The JSON record of one watch event (``event`` is ``state`` or ``error``)."""
    record = key_record(line, event.key)
    record["event"] = "state" if event.task is not None else "error"
    record["final"] = event.final
    record["observed_at"] = datetime.now(UTC).isoformat(timespec="milliseconds")
    if event.task is not None:
        from .._converter import task_to_dict

        record["status"] = event.task.status.name
        record["task"] = task_to_dict(event.task)
    else:
        record["error"] = error_dict(event.error or RuntimeError("no task and no error"))
    return record


@attrs.define
class WatchLedger:
    """Last known state of every watched key: what the summary and exit status count."""

    last_task: dict[TaskKey, SegmentTask] = attrs.field(factory=dict)
    final_error: dict[TaskKey, BaseException] = attrs.field(factory=dict)
    finished: set[TaskKey] = attrs.field(factory=set)
    events: int = 0
    transient_errors: int = 0
    achieved_interval: float | None = None

    def record(self, event: WatchEvent) -> None:
        """Take one event into account."""
        self.events += 1
        if event.task is not None:
            self.last_task[event.key] = event.task
        elif event.final:
            self.final_error[event.key] = event.error or RuntimeError("no task and no error")
        else:
            self.transient_errors += 1
        if event.final:
            self.finished.add(event.key)

    def count_into(self, tally: Tally, keys: Iterable[TaskKey]) -> None:
        """Count every key once: its final error, else its last state, else ``NoAnswer``.

        After an interrupt, tasks still running count under their last status."""
        for key in keys:
            if key in self.final_error:
                tally.error(type(self.final_error[key]).__name__)
            elif key in self.last_task:
                tally.task(self.last_task[key])
            else:  # interrupted before its first answer
                tally.error("NoAnswer")


async def watch_keys(
    client: SegmentClient,
    keys: list[TaskKey],
    lines: KeyLines,
    *,
    poll_interval: float,
    terminal: Terminal,
    ledger: WatchLedger,
    progress: ProgressReporter,
) -> None:
    """Watch ``keys`` to the end, writing one JSON line per event."""
    async with client.watch_segment_tasks(keys, poll_interval=poll_interval) as watch:
        async for event in watch:
            ledger.record(event)
            terminal.emit(dumps(event_record(lines.peek_line(event.key), event)), flush=True)
            if event.final:
                progress.advance(failed=event.error is not None)
            ledger.achieved_interval = watch.achieved_interval


async def command_watch(args: argparse.Namespace, context: Context) -> int:
    """Watch every key of ``--input`` until its task has ended or failed."""
    terminal = context.terminal
    with open_input(args.input, terminal) as (stream, _):
        items = list(parsed_input(stream))
    async with make_client(args, context) as client:
        tally = Tally(qps=client.limiter.qps)
        ledger = WatchLedger()
        with progress_for(terminal, None, lambda: client.stats, "watching") as progress:
            lines = KeyLines(items, terminal, tally, progress)
            keys = list(dict.fromkeys(lines.keys()))  # a key is watched once
            progress.set_total(len(keys))
            completed = await run_until_interrupted(
                watch_keys(
                    client,
                    keys,
                    lines,
                    poll_interval=args.poll_interval,
                    terminal=terminal,
                    ledger=ledger,
                    progress=progress,
                ),
                context.interrupt,
            )
        tally.finish()
        tally.interrupted = not completed
        ledger.count_into(tally, keys)
        stats = client.stats
    extra = [
        ("events", str(ledger.events), "state changes and errors written"),
        ("transient", str(ledger.transient_errors), "failed polls that were tried again"),
    ]
    if ledger.achieved_interval is not None:
        extra.append(("interval", f"{ledger.achieved_interval:.2f} s", "achieved between polls"))
    if tally.interrupted:
        extra.append(("unfinished", str(len(keys) - len(ledger.finished)), "still watched"))
    terminal.stdout.flush()
    terminal.show(summary_view("rtc-segment watch", tally, stats, extra=extra), on_stderr=True)
    return exit_status(tally)
