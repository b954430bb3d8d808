"""Where output goes: stdout for results, stderr for progress, warnings and summaries.

Whether each stream is a terminal is decided once, here, so that every command makes the same
choice (readable on a terminal, machine-readable in a pipe) and tests can force either.
"""

from __future__ import annotations

import sys
from typing import TextIO

import attrs
from rich.console import Console, RenderableType

__all__ = ["Terminal"]


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False


@attrs.define
class Terminal:
    """The process's streams, and a rich console on each output stream.

    ``stdout_is_terminal``/``stderr_is_terminal`` default to ``isatty()``; tests pass them.
    """

    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    stdout_is_terminal: bool
    stderr_is_terminal: bool
    out: Console = attrs.field(init=False)
    """Rich console on stdout: colours and layout only when stdout is a terminal."""
    err: Console = attrs.field(init=False)
    """Rich console on stderr."""

    def __attrs_post_init__(self) -> None:
        self.out = Console(
            file=self.stdout, force_terminal=self.stdout_is_terminal, soft_wrap=False
        )
        self.err = Console(file=self.stderr, force_terminal=self.stderr_is_terminal)

    @classmethod
    def create(
        cls,
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        stdout_is_terminal: bool | None = None,
        stderr_is_terminal: bool | None = None,
    ) -> Terminal:
        """The given streams (``sys`` ones by default), probing ``isatty`` when not told."""
        stdin = sys.stdin if stdin is None else stdin
        stdout = sys.stdout if stdout is None else stdout
        stderr = sys.stderr if stderr is None else stderr
        return cls(
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            stdout_is_terminal=(
                _is_terminal(stdout) if stdout_is_terminal is None else stdout_is_terminal
            ),
            stderr_is_terminal=(
                _is_terminal(stderr) if stderr_is_terminal is None else stderr_is_terminal
            ),
        )

    def emit(self, line: str, *, flush: bool = False) -> None:
        """Write one result line to stdout, untouched by rich (JSON must stay exact)."""
        self.stdout.write(line + "\n")
        if flush:
            self.stdout.flush()

    def show(self, renderable: RenderableType, *, on_stderr: bool = False) -> None:
        """Print a rich renderable; outside a terminal, without the trailing padding that
        rich adds to table rows (so logs and pasted transcripts stay clean)."""
        console = self.err if on_stderr else self.out
        if console.is_terminal:
            console.print(renderable)
            return
        with console.capture() as captured:
            console.print(renderable)
        stream = self.stderr if on_stderr else self.stdout
        stream.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))

    def warn(self, message: str) -> None:
        """A one-line diagnostic on stderr, printed literally (no markup interpretation)."""
        self.err.print(message, markup=False, highlight=False, soft_wrap=True)
