"""Temporary directories whose paths are short enough for a unix socket.

A unix socket's path is capped at 107 bytes. pytest's temporary directories sit below
``$TMPDIR``, which nox points into the clone (``<clone>/.nox/<session>/tmp``), so a socket
made there breaks as soon as the clone sits a few dozen characters deep. Whatever needs a
socket (a redis-server's ``--unixsocket``) gets a directory from here instead, whose path
does not depend on where the clone is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Room left for the socket's own file name (``redis.<port>.sock``: at most 16 bytes) and
#: then some: a directory this long or shorter always fits.
LONGEST_DIRECTORY = 60
#: The unix socket path limit (``sun_path`` is 108 bytes with its terminating NUL).
SOCKET_PATH_LIMIT = 107


def short_root() -> str:
    """A writable directory with a short path: ``$TMPDIR`` if it is short, else ``/tmp``."""
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        if len(candidate) <= LONGEST_DIRECTORY - 20 and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    raise RuntimeError(
        "no writable temporary directory with a short path for unix sockets "
        f"(tried $TMPDIR={tempfile.gettempdir()!r}, /tmp, /var/tmp)"
    )


def make_short_directory(prefix: str = "rtcs-") -> Path:
    """A new private directory below :func:`short_root` (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=short_root()))


@contextmanager
def short_directory(prefix: str = "rtcs-") -> Iterator[Path]:
    """A new private directory below :func:`short_root`, removed afterwards."""
    path = make_short_directory(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
