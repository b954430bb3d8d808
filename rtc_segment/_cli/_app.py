"""Dispatch: parse the command line, set up logging and Ctrl-C, run one command, map errors
to exit statuses (0 ok, 1 some keys (or the action) failed, 2 usage/configuration,
130 interrupted)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence

import httpx

from .._errors import CredentialsError
from ._commands import command_get, command_poll
from ._context import Context, UsageError
from ._parser import build_parser
from ._terminal import Terminal

__all__ = ["run"]

_Command = Callable[[argparse.Namespace, Context], Awaitable[int]]
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _commands() -> dict[str, _Command]:
    from ._actions import command_start, command_stop, command_update
    from ._demo import command_demo, command_emulator
    from ._watch import command_watch

    return {
        "get": command_get,
        "poll": command_poll,
        "watch": command_watch,
        "start": command_start,
        "update": command_update,
        "stop": command_stop,
        "demo": command_demo,
        "emulator": command_emulator,
    }


def run(
    argv: Sequence[str] | None = None,
    *,
    terminal: Terminal | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """Run ``rtc-segment`` with ``argv`` and return its exit status.

    ``terminal`` and ``transport`` are for tests: forced terminal/pipe streams, and an httpx
    transport (the emulator's) used by every client the command makes.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse reported
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    terminal = terminal or Terminal.create()
    command = _commands()[args.command]
    with _logging(terminal, args.verbose):
        try:
            return asyncio.run(_main(command, args, terminal, transport))
        except (UsageError, CredentialsError) as exc:
            terminal.warn(f"rtc-segment {args.command}: error: {exc}")
            return EXIT_USAGE
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside a long run
            terminal.warn("rtc-segment: interrupted")
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep Python's exit-time
            # flush of stdout from raising again.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1


async def _main(
    command: _Command,
    args: argparse.Namespace,
    terminal: Terminal,
    transport: httpx.AsyncBaseTransport | None,
) -> int:
    context = Context(terminal=terminal, transport=transport)
    with _ctrl_c(context):
        return await command(args, context)


@contextlib.contextmanager
def _ctrl_c(context: Context) -> Iterator[None]:
    """The first Ctrl-C sets ``context.interrupt``; the next one raises KeyboardInterrupt.

    Only in the main thread of a loop that supports signal handlers (not Windows); elsewhere
    Ctrl-C keeps its default behaviour. The emulator's server, embedded in this loop by
    ``demo`` and ``emulator``, leaves the handler alone.
    """
    loop = asyncio.get_running_loop()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    presses = 0

    def on_sigint() -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            raise KeyboardInterrupt
        context.interrupt.set()

    previous = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError, ValueError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _logging(terminal: Terminal, verbosity: int) -> Iterator[None]:
    """``-v``: the library's log records (never secrets: it does not log them) on stderr."""
    if not verbosity:
        yield
        return
    logger = logging.getLogger("rtc_segment")
    handler = logging.StreamHandler(terminal.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
