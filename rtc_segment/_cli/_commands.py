"""``get`` and ``poll``: thin layers over the public client API (``watch`` is in ``_watch``)."""

from __future__ import annotations

import argparse
import itertools
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from .._client import SegmentClient
from .._converter import task_to_dict
from .._errors import RtcSegmentError
from .._models import SegmentTask, TaskKey, TaskOutcome
from .._stats import ClientStats
from ._context import Context, UsageError, make_client, open_input, run_until_interrupted
from ._inputs import BadLine, InputFormatError, KeyLine, read_keys
from ._progress import BarProgress, PlainProgress, ProgressReporter
from ._records import INPUT_ERROR, dumps, error_dict, key_record, task_record
from ._terminal import Terminal
from ._views import Tally, summary_view, task_view

__all__ = ["KeyLines", "command_get", "command_poll", "emit_outcome", "progress_for"]


def exit_status(tally: Tally) -> int:
    """130 when interrupted, 1 when some key failed, else 0."""
    if tally.interrupted:
        return 130
    return 1 if tally.failed else 0


def progress_for(
    terminal: Terminal,
    total: int | None,
    stats: Callable[[], ClientStats],
    label: str,
    *,
    plain: bool = False,
) -> ProgressReporter:
    """A bar when stderr is a terminal; else periodic lines if ``plain``, else nothing."""
    if terminal.stderr_is_terminal:
        return BarProgress(terminal.err, total, stats, label)
    if plain:
        return PlainProgress(terminal.err, total, stats, label)
    return ProgressReporter()


# -- get --------------------------------------------------------------------------------


async def command_get(args: argparse.Namespace, context: Context) -> int:
    """Fetch one task; print it readably on a terminal, else (or with ``--json``) as JSON."""
    terminal = context.terminal
    key = TaskKey(args.app_id, args.room_id, args.task_id)
    as_json = args.json or not terminal.stdout_is_terminal
    async with make_client(args, context) as client:
        try:
            task = await client.get_segment_task(*key)
        except RtcSegmentError as error:
            terminal.warn(f"rtc-segment: {error}")
            if as_json:
                terminal.emit(dumps({**key_record(None, key), "error": error_dict(error)}))
            return 1
        except (TypeError, ValueError) as error:  # an invalid id: nothing was sent
            raise UsageError(str(error)) from None
    if as_json:
        indent = 2 if terminal.stdout_is_terminal else None
        terminal.emit(json.dumps(task_to_dict(task), ensure_ascii=False, indent=indent))
    else:
        terminal.show(task_view(key, task))
    return 0


# -- reading keys -------------------------------------------------------------------------


class KeyLines:
    """Feeds the keys of an input to the fan-out and remembers which line each came from.

    Bad lines are reported as they are read (stderr, and an error record on stdout) and never
    reach the client. Duplicated keys are kept: each line gets its own answer.
    """

    def __init__(
        self,
        items: Iterable[KeyLine | BadLine],
        terminal: Terminal,
        tally: Tally,
        progress: ProgressReporter,
    ) -> None:
        self._items = items
        self._terminal = terminal
        self._tally = tally
        self._progress = progress
        self._lines: dict[TaskKey, deque[int]] = {}
        self.keys_read = 0

    def keys(self) -> Iterator[TaskKey]:
        """The valid keys, lazily, in input order."""
        for item in self._items:
            if isinstance(item, BadLine):
                self._terminal.warn(f"rtc-segment: input line {item.line}: {item.problem}")
                record = key_record(item.line, None)
                record["error"] = {"type": INPUT_ERROR, "message": item.problem}
                self._terminal.emit(dumps(record))
                self._tally.error(INPUT_ERROR)
                self._progress.advance(failed=True)
                continue
            self.keys_read += 1
            self._lines.setdefault(item.key, deque()).append(item.line)
            yield item.key

    def line_of(self, key: TaskKey) -> int | None:
        """The input line of ``key``'s next answer (each line is handed out once)."""
        lines = self._lines.get(key)
        if not lines:
            return None
        line = lines.popleft()
        if not lines:
            del self._lines[key]
        return line

    def peek_line(self, key: TaskKey) -> int | None:
        """The first input line of ``key`` without handing it out (for watch events)."""
        lines = self._lines.get(key)
        return lines[0] if lines else None


def parsed_input(stream: Iterable[str]) -> Iterator[KeyLine | BadLine]:
    """:func:`read_keys`, with a bad header raised now as a :class:`UsageError`."""
    items = read_keys(stream)  # type: ignore[arg-type]
    try:
        first = next(items, None)
    except InputFormatError as exc:
        raise UsageError(f"--input: {exc}") from None
    return itertools.chain([] if first is None else [first], items)


def emit_outcome(
    outcome: TaskOutcome, line: int | None, terminal: Terminal, tally: Tally
) -> SegmentTask | None:
    """Write the JSON line of one fan-out outcome and count it."""
    if outcome.task is not None:
        terminal.emit(dumps(task_record(line, outcome.key, outcome.task)))
        tally.task(outcome.task)
        return outcome.task
    error = outcome.error or RuntimeError("no task and no error")
    if isinstance(error, (TypeError, ValueError)) and not isinstance(error, RtcSegmentError):
        where = f"input line {line}: " if line is not None else ""
        terminal.warn(f"rtc-segment: {where}{error}")
    terminal.emit(dumps({**key_record(line, outcome.key), "error": error_dict(error)}))
    tally.error(type(error).__name__)
    return None


# -- poll ---------------------------------------------------------------------------------


async def command_poll(args: argparse.Namespace, context: Context) -> int:
    """Fetch every key of ``--input`` at the ceiling; one JSON line per key; summary on stderr."""
    terminal = context.terminal
    with open_input(args.input, terminal) as (stream, total):
        items = parsed_input(stream)
        async with make_client(args, context) as client:
            tally = Tally(qps=client.limiter.qps)
            with progress_for(terminal, total, lambda: client.stats, "polling") as progress:
                source = KeyLines(items, terminal, tally, progress)
                completed = await run_until_interrupted(
                    _poll(client, source, terminal, tally, progress), context.interrupt
                )
            tally.finish()
            tally.interrupted = not completed
            stats = client.stats
    terminal.stdout.flush()
    terminal.show(summary_view("rtc-segment poll", tally, stats), on_stderr=True)
    return exit_status(tally)


async def _poll(
    client: SegmentClient,
    source: KeyLines,
    terminal: Terminal,
    tally: Tally,
    progress: ProgressReporter,
) -> None:
    async for outcome in client.get_segment_tasks(source.keys()):
        task = emit_outcome(outcome, source.line_of(outcome.key), terminal, tally)
        progress.advance(failed=task is None)
