"""The ``rtc-segment`` command (extra ``cli``).

Subcommands: get, poll, watch, start, update, stop, emulator, demo.

Run ``rtc-segment --help``. The implementation lives in :mod:`rtc_segment._cli`; this module
is the console-script entry point and the one place that checks the extra is installed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

_MISSING_EXTRA = "rtc-segment: install the cli extra: pip install 'rtc-segment[cli]'"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``) and return its exit status."""
    try:
        import rich  # noqa: F401
    except ImportError:
        print(_MISSING_EXTRA, file=sys.stderr)
        return 2
    from ._cli._app import run

    return run(argv)


if __name__ == "__main__":  # pragma: no cover - `python -m rtc_segment.cli`
    sys.exit(main())
