"""What every command receives, the client it builds, and how Ctrl-C stops a run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sys
from collections.abc import Coroutine, Iterator
from typing import Any, TextIO

import attrs
import httpx

from .._client import SegmentClient
from .._credentials import ENV_ACCESS_KEY, ENV_SESSION_TOKEN, Credentials
from .._errors import CredentialsError
from ._terminal import Terminal

__all__ = ["Context", "UsageError", "make_client", "open_input", "run_until_interrupted"]


class UsageError(Exception):
    """A mistake in the command line or configuration: reported in one line, exit status 2."""


@attrs.define
class Context:
    """The outside world of one command run.

    Attributes:
        terminal: The streams.
        interrupt: Set on the first Ctrl-C: long commands stop and print their summary.
        transport: An httpx transport for every client the command makes (tests use the
            emulator's, so no socket is opened); ``None`` for the network.
    """

    terminal: Terminal
    interrupt: asyncio.Event = attrs.field(factory=asyncio.Event)
    transport: httpx.AsyncBaseTransport | None = None


def make_client(args: argparse.Namespace, context: Context) -> SegmentClient:
    """The :class:`SegmentClient` the common options describe.

    Raises:
        UsageError: inconsistent credential options or a bad endpoint/region.
        CredentialsError: no credentials anywhere (the caller reports it, exit 2).
    """
    credentials: Credentials | None = None
    environ = os.environ
    if args.secret_key_stdin:
        access_key_id = args.access_key_id or environ.get(ENV_ACCESS_KEY)
        if not access_key_id:
            raise UsageError(f"--secret-key-stdin needs --access-key-id or {ENV_ACCESS_KEY}")
        if getattr(args, "input", None) == "-":
            raise UsageError("--secret-key-stdin and --input - cannot both read stdin")
        secret = context.terminal.stdin.readline().rstrip("\r\n")
        if not secret:
            raise UsageError("--secret-key-stdin: the first line of stdin is empty")
        credentials = Credentials(access_key_id, secret, environ.get(ENV_SESSION_TOKEN))
    elif args.access_key_id:
        raise UsageError(
            "--access-key-id needs --secret-key-stdin: a secret is never taken from the command "
            "line, where it would land in the shell's history"
        )
    try:
        return SegmentClient(
            credentials,
            endpoint=args.endpoint,
            region=args.region,
            api_version=args.api_version,
            qps=args.qps,
            timeout=args.timeout,
            max_retries=args.max_retries,
            transport=context.transport,
        )
    except CredentialsError:
        raise
    except (TypeError, ValueError) as exc:  # endpoint or region
        raise UsageError(str(exc)) from None


@contextlib.contextmanager
def open_input(name: str, terminal: Terminal) -> Iterator[tuple[TextIO, int | None]]:
    """Open the ``--input`` file (``-``: stdin) and count its data lines when it is a file.

    Undecodable bytes become U+FFFD, so one bad line fails on its own (as an invalid id)
    instead of ending the whole read. The count (``None`` for stdin) sizes the progress bar.
    """
    if name == "-":
        stdin = terminal.stdin
        if stdin is sys.stdin and hasattr(stdin, "buffer"):
            stdin = io.TextIOWrapper(stdin.buffer, encoding="utf-8-sig", errors="replace")
        yield stdin, None
        return
    try:
        stream = open(name, encoding="utf-8-sig", errors="replace", newline="")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot read --input {name!r}: {exc.strerror or exc}") from None
    with stream:
        yield stream, _count_data_lines(stream)


def _count_data_lines(stream: TextIO) -> int | None:
    if not stream.seekable():
        return None
    count, first = 0, None
    for line in stream:
        if line.strip():
            count += 1
            if first is None:
                first = line
    stream.seek(0)
    header = first is not None and not first.lstrip().startswith("{")
    return count - 1 if header else count


async def run_until_interrupted(work: Coroutine[Any, Any, None], interrupt: asyncio.Event) -> bool:
    """Run ``work`` until it finishes (``True``) or ``interrupt`` is set (``False``).

    On interrupt, ``work`` is cancelled and awaited, so its ``async with``/``finally`` blocks
    run (the fan-out cancels its in-flight requests) before the caller prints its summary.
    """
    body = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(interrupt.wait())
    try:
        done, _ = await asyncio.wait({body, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (body, stopper):
            task.cancel()
        await asyncio.gather(body, stopper, return_exceptions=True)
    if body in done:
        body.result()  # the work's own exception, if it failed
        return True
    return False
