"""The argument parser (argparse: in the standard library, subcommands, testable in process)."""

from __future__ import annotations

import argparse

from .. import __version__
from .._client import DEFAULT_ENDPOINT

__all__ = ["DEMO_ROOMS", "build_parser"]

#: Default size of the demo: 600 rooms take ten seconds at 60 QPS.
DEMO_ROOMS = 600

_DESCRIPTION = """\
Query Volcengine RTC segment tasks (GetSegmentTask): one task, thousands at the 60 QPS
ceiling, or watch them until they end. `rtc-segment demo` shows it all on a local emulator,
no account needed.

Credentials come from VOLC_ACCESSKEY / VOLC_SECRETKEY (/ VOLC_SESSION_TOKEN), then from
~/.volc/credentials, never from a command-line value (use --secret-key-stdin to pipe one in).

exit status: 0 every key got a task; 1 some keys failed (or a bad input line); 2 usage or
configuration error; 130 interrupted (Ctrl-C), after printing the summary so far."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return value


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=0, help="log the library's activity to stderr"
    )
    return common


def _client_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("service")
    group.add_argument(
        "--endpoint", default=DEFAULT_ENDPOINT, help="OpenAPI base URL (default: %(default)s)"
    )
    group.add_argument("--region", default="cn-north-1", help="signing region (%(default)s)")
    group.add_argument(
        "--qps", type=_positive_float, default=60.0, help="request ceiling (%(default)g)"
    )
    group.add_argument(
        "--timeout", type=_positive_float, default=10.0, help="seconds per attempt (%(default)g)"
    )
    group.add_argument(
        "--max-retries",
        type=_non_negative_int,
        default=3,
        help="retries of transient failures (%(default)d)",
    )
    creds = parent.add_argument_group("credentials (default: environment, ~/.volc/credentials)")
    creds.add_argument(
        "--access-key-id", help="access key id; the secret then comes from --secret-key-stdin"
    )
    creds.add_argument(
        "--secret-key-stdin",
        action="store_true",
        help="read the secret key from the first line of stdin (never pass it as a value)",
    )
    return parent


def _input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        "-i",
        required=True,
        metavar="FILE",
        help="CSV with header app_id,room_id,task_id, or JSON lines; '-' reads stdin",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``rtc-segment`` parser with its five subcommands."""
    common, client = _common(), _client_options()
    parser = argparse.ArgumentParser(
        prog="rtc-segment",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    get = commands.add_parser(
        "get",
        parents=[common, client],
        help="show one task",
        description="Show one task: readable on a terminal, JSON in a pipe or with --json.",
    )
    get.add_argument("--app-id", required=True)
    get.add_argument("--room-id", required=True)
    get.add_argument("--task-id", required=True)
    get.add_argument("--json", action="store_true", help="print the task as JSON")

    poll = commands.add_parser(
        "poll",
        parents=[common, client],
        help="fetch many tasks at the ceiling, one JSON line each",
        description=(
            "Fetch every key of the input at the QPS ceiling. One JSON line per key on stdout "
            "(line, ids, then status and task, or error); progress and a summary on stderr."
        ),
    )
    _input_options(poll)

    watch = commands.add_parser(
        "watch",
        parents=[common, client],
        help="follow tasks until they end, one JSON line per change",
        description=(
            "Poll every key until its task has ended or failed, printing a JSON line each "
            "time a task changes. Ctrl-C stops and prints the summary so far."
        ),
    )
    _input_options(watch)
    watch.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds between polls of one task (%(default)g)",
    )

    emulator = commands.add_parser(
        "emulator",
        parents=[common],
        help="serve the local emulator of the service on 127.0.0.1",
        description=(
            "Serve the emulator on 127.0.0.1 with seeded rooms, print its URL and the "
            "(test-only) credentials it accepts, and run until interrupted."
        ),
    )
    emulator.add_argument("--port", type=_port, default=8000, help="0 picks a free port")
    emulator.add_argument("--rooms", type=_non_negative_int, default=100)
    emulator.add_argument("--qps", type=_positive_float, default=60.0)
    emulator.add_argument("--latency-ms", type=_non_negative_int, default=0, metavar="L")
    emulator.add_argument("--fault-rate", type=_fraction, default=0.0, metavar="F")
    emulator.add_argument("--seed", type=int, default=0)
    emulator.add_argument(
        "--keys-out",
        metavar="FILE",
        help="write the seeded keys as CSV, ready for `poll --input FILE`",
    )

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="poll and watch seeded rooms on an in-process emulator (no account needed)",
        description=(
            "Start the emulator on a loopback port, seed rooms, poll them all through the real "
            "HTTP path at 60 QPS, watch a few until they end, and print the summary."
        ),
    )
    demo.add_argument(
        "--rooms",
        type=_positive_int,
        default=DEMO_ROOMS,
        help="rooms to seed and poll (%(default)d: about ten seconds)",
    )
    demo.add_argument("--watch", type=_non_negative_int, default=5, help="tasks to watch (5)")
    return parser
