"""``demo`` and ``emulator``: the command line on the embedded emulator, no account needed."""

from __future__ import annotations

import argparse
import asyncio
import csv
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

from rich.text import Text

from .._client import SegmentClient
from .._credentials import ENV_ACCESS_KEY, ENV_SECRET_KEY
from .._models import SegmentTask, TaskKey
from ..testing import DEFAULT_CREDENTIALS, Emulator, Fault
from ._commands import exit_status, progress_for
from ._context import Context, UsageError, run_until_interrupted
from ._progress import ProgressReporter
from ._terminal import Terminal
from ._views import Tally, summary_view

__all__ = ["command_demo", "command_emulator"]

#: The ceiling the demo polls at: the service's documented quota.
DEMO_QPS = 60.0
#: Seconds between two polls of a watched task in the demo.
DEMO_WATCH_INTERVAL = 1.0
#: The demo stops watching after this long, whatever the emulator's lifecycles do.
DEMO_WATCH_LIMIT = 60.0
# Faults the emulator's --fault-rate spreads evenly over: the transient kinds a client must
# ride out (no SLOW: a 60 s answer would only make the emulator look hung).
_TRANSIENT_FAULTS = (Fault.HTTP_500, Fault.HTTP_503, Fault.HTTP_504, Fault.HTTP_429, Fault.DROP)


def _key_text(key: TaskKey) -> str:
    return "/".join(key)


# -- demo -------------------------------------------------------------------------------


async def command_demo(args: argparse.Namespace, context: Context) -> int:
    """Poll ``--rooms`` seeded rooms over loopback HTTP at 60 QPS, watch a few, summarise."""
    terminal = context.terminal
    emulator = Emulator(qps=DEMO_QPS, seed=0)
    keys = emulator.seed_rooms(args.rooms)
    async with emulator.serve(port=0) as base_url:

        def say(message: str) -> None:
            terminal.out.print(message, markup=False, highlight=False, soft_wrap=True)

        say(
            f"rtc-segment demo: emulator serving on {base_url}, {len(keys)} rooms seeded "
            "(test credentials, no account needed)"
        )
        async with SegmentClient(DEFAULT_CREDENTIALS, endpoint=base_url, qps=DEMO_QPS) as client:
            say(f"Polling {len(keys)} tasks at {DEMO_QPS:g} QPS through HTTP...")
            tally = Tally(qps=DEMO_QPS)
            outcomes: Counter[TaskKey] = Counter()
            latest: dict[TaskKey, SegmentTask] = {}
            with progress_for(
                terminal, len(keys), lambda: client.stats, "polling", plain=True
            ) as progress:
                completed = await run_until_interrupted(
                    _poll_all(client, keys, tally, outcomes, latest, progress), context.interrupt
                )
            tally.finish()
            tally.interrupted = not completed
            poll_stats = client.stats
            polls = [r for r in emulator.requests if r.action == "GetSegmentTask"]
            reached = Counter(record.key for record in polls)
            arrival_rate = _arrival_rate([record.arrival for record in polls])
            window_max = emulator.max_in_window(1.0)
            server_throttled = emulator.throttled_count
            watched: list[TaskKey] = []
            ended = 0
            watch_seconds = 0.0
            if completed and args.watch:
                watched = _soonest_to_end(emulator, latest, args.watch)
            if watched:
                say(
                    f"Watching {len(watched)} running tasks until they end "
                    f"(one poll per task every {DEMO_WATCH_INTERVAL:g} s):"
                )
                started = time.monotonic()
                finals: list[SegmentTask] = []
                completed = await run_until_interrupted(
                    _watch(client, watched, terminal, finals), context.interrupt
                )
                watch_seconds = time.monotonic() - started
                ended = sum(1 for task in finals if task.is_terminal)
                tally.interrupted = not completed
    seeded = set(keys)
    # Keys without exactly one outcome. After Ctrl-C, keys never polled are not lost: they
    # are reported as such.
    missing = sum(1 for key in keys if not outcomes[key])
    lost = sum(1 for key in keys if outcomes[key] > 1) + (0 if tally.interrupted else missing)
    lost += sum(count for key, count in outcomes.items() if key not in seeded)
    never_reached = sum(1 for key in keys if outcomes[key] and not reached[key])
    extra = [
        ("arrivals", f"{arrival_rate:.1f}/s", "at the emulator, from first to last request"),
        ("max in 1 s", f"{window_max}", "requests in any 1-second window, at the emulator"),
        ("lost", f"{lost}", f"keys without exactly one outcome ({never_reached} never arrived)"),
    ]
    if tally.interrupted:
        extra.append(("not polled", str(missing), "interrupted before their turn"))
    if server_throttled != poll_stats.throttled:
        extra.append(("throttled", str(server_throttled), "counted by the emulator"))
    if watched:
        extra.append(("watched", f"{len(watched)}", f"{ended} ended, in {watch_seconds:.1f} s"))
    title = f"Summary ({len(keys)} rooms at {DEMO_QPS:g} QPS)"
    terminal.show(summary_view(title, tally, poll_stats, extra=extra))
    status = exit_status(tally)
    if status == 0 and (lost or poll_stats.throttled or ended < len(watched)):
        status = 1
    return status


def _arrival_rate(arrivals: list[float]) -> float:
    """Requests per second between the first and the last arrival (0 for fewer than two)."""
    if len(arrivals) < 2:
        return 0.0
    span = max(arrivals) - min(arrivals)
    return (len(arrivals) - 1) / span if span > 0 else 0.0


async def _poll_all(
    client: SegmentClient,
    keys: list[TaskKey],
    tally: Tally,
    outcomes: Counter[TaskKey],
    latest: dict[TaskKey, SegmentTask],
    progress: ProgressReporter,
) -> None:
    async for outcome in client.get_segment_tasks(keys):
        outcomes[outcome.key] += 1
        if outcome.task is not None:
            tally.task(outcome.task)
            latest[outcome.key] = outcome.task
        else:
            tally.error(type(outcome.error).__name__)
        progress.advance(failed=outcome.task is None)


def _soonest_to_end(
    emulator: Emulator, latest: dict[TaskKey, SegmentTask], count: int
) -> list[TaskKey]:
    """Running tasks whose scheduled end is nearest (at least a second away, to see it)."""
    ends: list[tuple[float, TaskKey]] = []
    for key, task in latest.items():
        if task.is_terminal:
            continue
        ends_in = emulator.task(*key).ends_in
        if ends_in is not None and ends_in >= DEMO_WATCH_INTERVAL:
            ends.append((ends_in, key))
    return [key for _, key in sorted(ends)[:count]]


async def _watch(
    client: SegmentClient, keys: list[TaskKey], terminal: Terminal, finals: list[SegmentTask]
) -> None:
    async def follow() -> None:
        async with client.watch_segment_tasks(keys, poll_interval=DEMO_WATCH_INTERVAL) as watch:
            async for event in watch:
                stamp = datetime.now().strftime("%H:%M:%S")
                line = Text(f"  {stamp}  {_key_text(event.key)}  ")
                if event.task is not None:
                    task = event.task
                    line.append(task.status.name, style="bold")
                    if task.stop_reason is not None:
                        line.append(f" ({task.stop_reason.value})")
                    if event.final:
                        finals.append(task)
                else:
                    line.append(f"{type(event.error).__name__}: {event.error}", style="red")
                terminal.out.print(line)

    try:
        await asyncio.wait_for(follow(), DEMO_WATCH_LIMIT)
    except TimeoutError:
        terminal.warn(f"rtc-segment demo: stopped watching after {DEMO_WATCH_LIMIT:g} s")


# -- emulator ---------------------------------------------------------------------------


async def command_emulator(args: argparse.Namespace, context: Context) -> int:
    """Serve a seeded emulator on 127.0.0.1 until Ctrl-C; print its URL and credentials."""
    terminal = context.terminal
    emulator = Emulator(
        qps=args.qps,
        latency=args.latency_ms / 1000 if args.latency_ms else None,
        seed=args.seed,
    )
    if args.fault_rate:
        share = args.fault_rate / len(_TRANSIENT_FAULTS)
        emulator.faults.set_mix({fault: share for fault in _TRANSIENT_FAULTS}, seed=args.seed)
    keys = emulator.seed_rooms(args.rooms, seed=args.seed) if args.rooms else []
    if args.keys_out:
        _write_keys(args.keys_out, keys)
    try:
        server = emulator.serve(port=args.port)
        base_url = await server.__aenter__()
    except OSError as exc:
        raise UsageError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}") from None
    try:
        _announce(terminal, base_url, args, keys)
        await context.interrupt.wait()
    finally:
        await server.__aexit__(None, None, None)
    stats = emulator.stats
    terminal.warn(
        f"rtc-segment emulator: stopped after {stats.requests} requests "
        f"({stats.throttled} throttled)"
    )
    return 0


def _write_keys(path: str, keys: Iterable[TaskKey]) -> None:
    try:
        with open(path, "w", encoding="utf-8", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(TaskKey._fields)
            writer.writerows(keys)
    except OSError as exc:
        raise UsageError(f"cannot write --keys-out {path!r}: {exc.strerror or exc}") from None


def _announce(
    terminal: Terminal, base_url: str, args: argparse.Namespace, keys: list[TaskKey]
) -> None:
    credentials = DEFAULT_CREDENTIALS
    lines = [
        f"Emulator of the RTC segment API listening on {base_url}",
        f"  ceiling {args.qps:g} QPS, latency {args.latency_ms} ms, "
        f"fault rate {args.fault_rate:g}, seed {args.seed}",
        "It accepts these test credentials (not a Volcengine account):",
        f"  export {ENV_ACCESS_KEY}={credentials.access_key_id}",
        f"  export {ENV_SECRET_KEY}={credentials.secret_access_key}",
    ]
    if keys:
        first = keys[0]
        lines.append(f"{len(keys)} rooms seeded, e.g. {_key_text(first)}")
        lines.append(
            f"  rtc-segment get --endpoint {base_url} --app-id {first.app_id} "
            f"--room-id {first.room_id} --task-id {first.task_id}"
        )
        if args.keys_out:
            lines.append(f"  rtc-segment poll --endpoint {base_url} --input {args.keys_out}")
    lines.append("Ctrl-C stops it.")
    for line in lines:
        terminal.out.print(line, markup=False, highlight=False, soft_wrap=True)
    terminal.stdout.flush()
