"""Running ``rtc-segment`` in process for the CLI tests: captured streams, no sockets."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from rtc_segment._cli._app import run
from rtc_segment._cli._terminal import Terminal
from rtc_segment.testing import DEFAULT_CREDENTIALS


class Run:
    """The result of one in-process run."""

    def __init__(self, status: int, stdout: str, stderr: str) -> None:
        self.status = status
        self.stdout = stdout
        self.stderr = stderr

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every stdout line, parsed as JSON."""
        return [json.loads(line) for line in self.stdout.splitlines()]

    @property
    def record(self) -> dict[str, Any]:
        """The one JSON line on stdout."""
        records = self.records
        assert len(records) == 1, self.stdout
        return records[0]


def cli(
    argv: list[str],
    transport: httpx.AsyncBaseTransport | None = None,
    *,
    stdin: str = "",
    stdout_tty: bool = False,
    stderr_tty: bool = False,
) -> Run:
    """Run the command with captured streams (and the given transport, if any)."""
    out, err = io.StringIO(), io.StringIO()
    terminal = Terminal.create(
        stdin=io.StringIO(stdin),
        stdout=out,
        stderr=err,
        stdout_is_terminal=stdout_tty,
        stderr_is_terminal=stderr_tty,
    )
    status = run(argv, terminal=terminal, transport=transport)
    return Run(status, out.getvalue(), err.getvalue())


def use_emulator_credentials(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """The emulator's test credentials in the environment, and no ~/.volc file."""
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("VOLC_ACCESSKEY", DEFAULT_CREDENTIALS.access_key_id)
    monkeypatch.setenv("VOLC_SECRETKEY", DEFAULT_CREDENTIALS.secret_access_key)
    monkeypatch.delenv("VOLC_SESSION_TOKEN", raising=False)
