"""The argument parser (argparse: in the standard library, subcommands, testable in process)."""

from __future__ import annotations

import argparse

from .. import __version__
from .._actions import API_VERSIONS, DEFAULT_API_VERSION
from .._endpoints import DEFAULT_ENDPOINT

__all__ = ["DEMO_ROOMS", "build_parser"]

#: Default size of the demo: 600 rooms take ten seconds at 60 QPS.
DEMO_ROOMS = 600

_DESCRIPTION = """\
Query Volcengine RTC segment tasks (GetSegmentTask): one task, thousands at the 60 QPS
ceiling, or watch them until they end; start, update and stop them. `rtc-segment demo`
shows it all on a local emulator, no account needed.

Credentials come from the default chain: VOLCENGINE_ACCESS_KEY / VOLCENGINE_SECRET_KEY or
VOLC_ACCESSKEY / VOLC_SECRETKEY, OIDC (VOLCENGINE_OIDC_*), the CLI's ~/.volcengine/config.json,
~/.volc/credentials, the ECS instance role -- never from a command-line value (use
--secret-key-stdin to pipe one in).

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
        "--api-version",
        choices=API_VERSIONS,
        default=DEFAULT_API_VERSION,
        help="OpenAPI version of the segment actions (%(default)s)",
    )
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
    """The ``rtc-segment`` parser with its eight subcommands."""
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

    _action_parsers(commands, common, client)

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


# -- start, update, stop --------------------------------------------------------------------

#: ``--storage-type`` names and the ``--vendor`` names of third-party storage
#: (StorageConfig in https://www.volcengine.com/docs/6348/1188212).
STORAGE_TYPES = ("tos", "vod", "custom", "veimagex")
VENDORS = {"s3": 0, "oss": 1, "obs": 2, "cos": 3, "kodo": 4}
_STREAM_TYPES = {"normal": 0, "screen": 1}


def _int_text(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _vendor(text: str) -> int:
    if text.lower() in VENDORS:
        return VENDORS[text.lower()]
    try:
        return _non_negative_int(text)
    except argparse.ArgumentTypeError:
        names = ", ".join(VENDORS)
        raise argparse.ArgumentTypeError(
            f"not a vendor: {text!r} (use {names} or a number)"
        ) from None


def parse_stream(text: str) -> tuple[int, str, int]:
    """``INDEX:USER_ID[:TYPE]`` (TYPE ``normal``/``screen`` or 0/1) as ``(index, user, type)``.

    The user id itself cannot hold a colon: ids are ``[A-Za-z0-9_@.-]``.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise argparse.ArgumentTypeError(f"expected INDEX:USER_ID[:TYPE], got {text!r}")
    index = _non_negative_int(parts[0])
    kind = 0
    if len(parts) == 3:
        name = parts[2].lower()
        if name in _STREAM_TYPES:
            kind = _STREAM_TYPES[name]
        elif name in ("0", "1"):
            kind = int(name)
        else:
            raise argparse.ArgumentTypeError(
                f"stream type must be normal, screen, 0 or 1, got {parts[2]!r}"
            )
    return index, parts[1], kind


def _key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--room-id", required=True)
    parser.add_argument("--task-id", required=True)
    parser.add_argument("--business-id", help="business tag of the task")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON line (the default outside a terminal)"
    )


def _action_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    client: argparse.ArgumentParser,
) -> None:
    start = commands.add_parser(
        "start",
        parents=[common, client],
        help="start a segment task (StartSegment)",
        description=(
            "Start an audio-segment task. Prints a confirmation on a terminal, a JSON line "
            "otherwise. A start whose answer was lost is checked with GetSegmentTask, never "
            "sent twice blindly."
        ),
    )
    _key_options(start)
    slicing = start.add_argument_group("slicing")
    slicing.add_argument(
        "--duration", type=_int_text, default=20, metavar="S", help="slice length, 1-600 s (20)"
    )
    slicing.add_argument(
        "--max-idle-time",
        type=_int_text,
        default=180,
        metavar="S",
        help="end the task after this long without audio, 1-86400 s (180)",
    )
    slicing.add_argument(
        "--no-handle",
        dest="handle",
        action="store_false",
        help="start without slicing (turn it on later with update --handle)",
    )
    slicing.add_argument("--identifier", help="file-name prefix of the slices")
    slicing.add_argument(
        "--stream",
        dest="streams",
        action="append",
        type=parse_stream,
        default=[],
        metavar="INDEX:USER_ID[:TYPE]",
        help="a stream to slice (repeatable, at most 17; TYPE normal or screen); "
        "none: every stream in the room",
    )
    slicing.add_argument("--align", action="store_true", help="align slices across users")
    slicing.add_argument("--mixed", action="store_true", help="also slice the mixed audio")
    slicing.add_argument("--ignore-silence", action="store_true", help="skip silent slices")
    slicing.add_argument(
        "--redundant-duration",
        type=_non_negative_int,
        metavar="MS",
        help="milliseconds of the previous slice repeated at the start of the next",
    )
    storage = start.add_argument_group(
        "storage",
        "tos: --account-id --bucket; vod: --account-id --space; veimagex: --account-id "
        "--service-id; custom: --vendor --bucket --custom-access-key "
        "--custom-secret-key-stdin (with --secret-key-stdin too, the API secret is the first "
        "line of stdin and the storage secret the second)",
    )
    storage.add_argument(
        "--storage-type", choices=STORAGE_TYPES, default="tos", help="where slices go (tos)"
    )
    storage.add_argument("--account-id", help="Volcengine account id (tos, vod, veimagex)")
    storage.add_argument("--bucket", help="bucket (tos, custom)")
    storage.add_argument("--space", help="VOD space (vod)")
    storage.add_argument("--service-id", help="veImageX service id (veimagex)")
    storage.add_argument(
        "--vendor",
        type=_vendor,
        help=f"third-party vendor: {', '.join(VENDORS)} or its number (custom; default s3)",
    )
    storage.add_argument(
        "--storage-region",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="region number from the service's region table (0)",
    )
    storage.add_argument("--custom-access-key", help="access key of the third-party storage")
    storage.add_argument(
        "--custom-secret-key-stdin",
        action="store_true",
        help="read the third-party storage's secret key from stdin (never pass it as a value)",
    )

    update = commands.add_parser(
        "update",
        parents=[common, client],
        help="change a running task (UpdateSegment)",
        description="Change the identifier, slicing on/off or slice length of a running task.",
    )
    _key_options(update)
    update.add_argument("--identifier", help="new file-name prefix")
    update.add_argument(
        "--handle",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="turn slicing on (--handle) or off (--no-handle)",
    )
    update.add_argument(
        "--duration",
        type=_int_text,
        metavar="S",
        help="new slice length, 1-600 s (restarts the slice timer)",
    )

    stop = commands.add_parser(
        "stop",
        parents=[common, client],
        help="stop a task (StopSegment)",
        description="Stop a running task. A stop retried after its answer was lost, which "
        "then finds the task already stopped, counts as done.",
    )
    _key_options(stop)
