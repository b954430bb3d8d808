"""The state one host's processes share to pace one account's action: a small file.

A :class:`HostState` is one file in a private directory on the host (``$XDG_RUNTIME_DIR``,
else the temporary directory; see :func:`state_directory`), memory-mapped by every process
that paces the same account, action and ceiling, and guarded by an advisory lock
(``flock``). It holds only times on the host's monotonic clock (``CLOCK_MONOTONIC``, which
``time.monotonic()`` reads in every process alike) and the account's fingerprint in its
name -- never a key or a secret:

* the next send slot (GCRA's "theoretical arrival time"), which spaces the sends of every
  process at the shared rate;
* the last ``limit`` sends, each with the window it needs (:class:`SharedLog`);
* the latest send, a host-wide rate cap, and the boot it was written in.

Every change happens inside :meth:`HostState.transaction`, which holds the lock for a few
microseconds and never across an ``await``: a process killed at any moment leaves no lock
behind (the kernel drops a dead process's ``flock``). A file that fails its checks (magic,
layout, CRC-32, a time too far ahead of the clock) is rebuilt as if ``limit`` requests had
just been sent -- never trusted into a burst; a file from an earlier boot, whose times mean
nothing now, is rebuilt empty. How the limiter uses it: ``docs/design/limiter.md``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import struct
import tempfile
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

try:  # POSIX only: where these are missing, the client paces each process on its own.
    import fcntl
    import mmap
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    mmap = None  # type: ignore[assignment]

__all__ = [
    "COARSE_CLOCK_TOLERANCE",
    "DIRECTORY_ENV",
    "LAYOUT_VERSION",
    "HostState",
    "HostStateUnavailableError",
    "SharedLog",
    "state_directory",
]

logger = logging.getLogger("rtc_segment")

#: Names a directory under which the state directory is made, instead of the runtime
#: directory: e.g. a volume that the containers of one pod share.
DIRECTORY_ENV = "RTC_SEGMENT_LIMITER_DIR"
#: The layout's version; it is in the file name too, so two layouts never share a file.
LAYOUT_VERSION = 1
_MAGIC = b"RTCSEGHL"

# magic, version, limit, boot id, qps, next slot, latest send, rate cap, fastest round trip,
# when it was seen, count, head
_HEADER = struct.Struct("<8sII16sddddddII")
# at (counts as sent at), window, sent (left at), owner, answered
_ENTRY = struct.Struct("<dddII")
_CRC = struct.Struct("<I")
_ENTRIES_AT = _HEADER.size

#: How far before a send was logged a caller's coarse clock (uvloop's) may read.
COARSE_CLOCK_TOLERANCE = 0.002

# A time further ahead of the clock than this is not a reservation but a broken file.
_MOST_AHEAD_SECONDS = 3600.0


class HostStateUnavailableError(OSError):
    """The host's shared state cannot be used here (no such directory, a read-only file
    system, a directory or file that is not private to this user, no ``fcntl``/``mmap``)."""


def _boot_id() -> bytes:
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        return uuid.UUID(text).bytes
    except (OSError, ValueError):
        return bytes(16)  # unknown: the clock checks still catch a file from another boot


_BOOT_ID = _boot_id()


def _private_directory(path: Path) -> Path:
    """Make ``path`` (mode 0700) or check that it is this user's private directory."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise HostStateUnavailableError(f"cannot create {path}: {exc.strerror}") from exc
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise HostStateUnavailableError(f"{path} is not a directory (a symlink is refused)")
    if info.st_uid != os.getuid():
        raise HostStateUnavailableError(f"{path} belongs to another user")
    if info.st_mode & 0o077:
        raise HostStateUnavailableError(f"{path} is open to other users (mode {info.st_mode:o})")
    return path


def state_directory(base: str | os.PathLike[str] | None = None) -> Path:
    """The private directory holding this user's state files, made if missing.

    ``rtc_segment-<uid>`` under ``base``, else under ``$RTC_SEGMENT_LIMITER_DIR``, else
    under ``$XDG_RUNTIME_DIR``, else under the temporary directory.

    Raises:
        HostStateUnavailableError: The directory cannot be made, or it is not a directory
            owned by this user and closed to others.
    """
    if fcntl is None or mmap is None:
        raise HostStateUnavailableError("this platform has no fcntl/mmap")
    chosen = base or os.environ.get(DIRECTORY_ENV) or os.environ.get("XDG_RUNTIME_DIR") or None
    root = Path(chosen) if chosen else Path(tempfile.gettempdir())
    return _private_directory(root / f"rtc_segment-{os.getuid()}")


class SharedLog:
    """The shared state, read and written in place while the lock is held.

    Only :meth:`HostState.transaction` makes one; it is valid until the transaction ends.
    """

    __slots__ = ("_buffer", "_dirty", "_limit")

    def __init__(self, buffer: mmap.mmap | bytearray, limit: int) -> None:
        self._buffer = buffer
        self._limit = limit
        self._dirty = False

    def _header(
        self,
    ) -> tuple[bytes, int, int, bytes, float, float, float, float, float, float, int, int]:
        return _HEADER.unpack_from(self._buffer, 0)

    def _set(self, **changes: float | int) -> None:
        fields = list(self._header())
        names = ("next_slot", "last_sent", "rate_cap", "fastest", "fastest_at", "count", "head")
        for name, value in changes.items():
            fields[5 + names.index(name)] = value
        _HEADER.pack_into(self._buffer, 0, *fields)
        self._dirty = True

    @property
    def next_slot(self) -> float:
        """The next send slot of the shared schedule (GCRA's theoretical arrival time)."""
        return self._header()[5]

    @next_slot.setter
    def next_slot(self, value: float) -> None:
        self._set(next_slot=value)

    @property
    def last_sent(self) -> float:
        """When the latest send left (``-inf`` before any)."""
        return self._header()[6]

    @property
    def rate_cap(self) -> float | None:
        """The host-wide cap on the send rate, requests per second (``None``: no cap)."""
        cap = self._header()[7]
        return cap if cap > 0 else None

    @rate_cap.setter
    def rate_cap(self, value: float | None) -> None:
        self._set(rate_cap=0.0 if value is None else value)

    def fastest(self, now: float, memory: float) -> float:
        """The fastest round trip any process saw within ``memory`` seconds (``inf``: none)."""
        fastest, seen = self._header()[8:10]
        return fastest if now - seen <= memory else float("inf")

    def saw_round_trip(self, seconds: float, now: float, memory: float) -> None:
        """Note a round trip: it becomes the fastest if it is, or if that is too old."""
        if seconds <= self.fastest(now, memory):
            self._set(fastest=seconds, fastest_at=now)

    def __len__(self) -> int:
        return self._header()[10]

    def _entry(self, index: int) -> tuple[float, float, float, int, int]:
        return _ENTRY.unpack_from(self._buffer, _ENTRIES_AT + index * _ENTRY.size)

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until one more send keeps every window at most ``limit``.

        The sends are in order, so only the ``limit``-th previous one needs checking; each
        carries its own window (a second plus how late it can have arrived).
        """
        count, head = self._header()[10:12]
        if count < self._limit:
            return 0.0
        at, window, _, _, _ = self._entry(head)
        wait = at + window - now
        return wait if wait > 1e-6 else 0.0

    def record(self, at: float, *, sent: float, window: float, owner: int) -> None:
        """Log a send that left at ``sent``, counted as if at ``at``, needing ``window``.

        ``at`` moves up to the previous send's, if that is later, to keep the log ordered.
        """
        header = self._header()
        count, head = header[10], header[11]
        if count:
            newest = self._entry((head + count - 1) % self._limit)
            at = max(at, newest[0])
        if count < self._limit:
            index, count = (head + count) % self._limit, count + 1
        else:
            index, head = head, (head + 1) % self._limit
        _ENTRY.pack_into(
            self._buffer, _ENTRIES_AT + index * _ENTRY.size, at, window, sent, owner, 0
        )
        self._set(count=count, head=head, last_sent=max(header[6], sent))

    def answered(
        self,
        owner: int,
        sent: float,
        now: float,
        window: Callable[[float], float],
        tolerance: float = 1e-6,
    ) -> bool:
        """Set the window of ``owner``'s unanswered send that left at about ``sent``, whose
        answer came at ``now``, to ``window(now - when it left)``.

        ``sent`` comes from the caller's clock, read just after the send was logged, so the
        send is the latest unanswered one of ``owner`` that left by ``sent``. That clock may
        be a coarser reading of the same clock (uvloop's loop time is in milliseconds:
        ``tolerance`` :data:`COARSE_CLOCK_TOLERANCE`), when a send within ``tolerance`` of
        ``sent`` is taken -- if it is the only one; with several, which is meant is
        unknown, and every window stays as wide as it was.

        Returns False when no send was changed.
        """
        count, head = self._header()[10:12]
        near: list[int] = []
        before: int | None = None
        for back in range(count - 1, -1, -1):
            index = (head + back) % self._limit
            _, _, left, who, done = self._entry(index)
            if who != owner or done:
                continue
            if abs(left - sent) <= tolerance:
                near.append(index)
            elif before is None and left <= sent:
                before = index
        chosen = near[0] if len(near) == 1 else before if not near else None
        if chosen is None:
            return False
        at, _, left, who, _ = self._entry(chosen)
        _ENTRY.pack_into(
            self._buffer, _ENTRIES_AT + chosen * _ENTRY.size, at, window(now - left), left, who, 1
        )
        self._dirty = True
        return True

    def wait_for_rate(self, now: float, rate: float) -> float:
        """Seconds from ``now`` until one more send keeps at most ``rate`` (at least one)
        sends of every process in any sliding second, by when they left."""
        limit = min(self._limit, max(1, math.floor(rate)))
        count, head = self._header()[10:12]
        if count < limit:
            return 0.0
        left = self._entry((head + count - limit) % self._limit)[2]
        wait = left + 1.0 - now
        return wait if wait > 1e-6 else 0.0

    def sent_since(self, since: float) -> int:
        """How many logged sends left after ``since``."""
        count, head = self._header()[10:12]
        total = 0
        for back in range(count - 1, -1, -1):
            if self._entry((head + back) % self._limit)[2] <= since:
                break
            total += 1
        return total

    def newest_at(self) -> float:
        """When the newest logged send counts (``-inf`` when none)."""
        count, head = self._header()[10:12]
        return self._entry((head + count - 1) % self._limit)[0] if count else float("-inf")


class HostState:
    """One shared-state file, mapped into this process.

    Args:
        path: The file (in a directory from :func:`state_directory`); ``None`` keeps the
            state in this process's memory instead (for a loop on a clock of its own, such
            as a virtual one: the same pacing, shared with nobody).
        qps: The ceiling (written into the file and checked).
        clock: The host's monotonic clock, for the sanity checks and rebuilds.
        rebuild_window: The window a rebuilt file gives each of the ``limit`` sends it
            assumes were just made.

    Raises:
        HostStateUnavailableError: The file cannot be opened, locked, sized or mapped, or
            it is not a regular file private to this user.
    """

    def __init__(
        self,
        path: Path | None,
        qps: float,
        *,
        clock: Callable[[], float],
        rebuild_window: float,
    ) -> None:
        if path is not None and (fcntl is None or mmap is None):
            raise HostStateUnavailableError("this platform has no fcntl/mmap")
        self.path = path
        self._qps = float(qps)
        self._limit = max(1, int(qps // 1))
        self._size = _ENTRIES_AT + self._limit * _ENTRY.size + _CRC.size
        self._clock = clock
        self._rebuild_window = rebuild_window
        # flock excludes other open files; threads of this process share ours.
        self._thread_lock = threading.Lock()
        self._pid = -1
        self._fd = -1
        self._map: mmap.mmap | bytearray | None = None
        self._warned_replaced = False
        if path is None:
            self._map = bytearray(self._size)
            self._check(self._map, fresh=True)
        else:
            self._open(path)

    def _open(self, path: Path) -> None:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise HostStateUnavailableError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                raise HostStateUnavailableError(f"{path} is not this user's regular file")
            if info.st_mode & 0o077:
                raise HostStateUnavailableError(f"{path} is open to other users")
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(fd).st_size
                if size != self._size:
                    os.ftruncate(fd, self._size)
                mapped = mmap.mmap(fd, self._size)
                self._check(mapped, fresh=size == 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except HostStateUnavailableError:
            os.close(fd)
            raise
        except OSError as exc:
            os.close(fd)
            raise HostStateUnavailableError(f"cannot use {path}: {exc}") from exc
        self._close()
        self._fd, self._map, self._pid = fd, mapped, os.getpid()
        self._identity = (info.st_dev, info.st_ino)

    def _close(self) -> None:
        if isinstance(self._map, bytearray):
            return
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self._fd >= 0:
            # Never in a forked child: closing would not drop the parent's lock (flock
            # belongs to the open file), but the descriptor is the parent's to close.
            if self._pid == os.getpid():
                os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        """Unmap and close the file (the state stays for the other processes)."""
        with self._thread_lock:
            self._close()

    def _now(self) -> float:
        return self._clock()

    def _check(self, buffer: mmap.mmap | bytearray, *, fresh: bool) -> None:
        """Rebuild the state in ``buffer`` if it is new, stale or broken (lock held)."""
        problem = None if fresh else self._problem(buffer)
        if fresh or problem == "stale":
            self._rebuild(buffer, busy=False)
        elif problem is not None:
            logger.warning(
                "rtc_segment: the host limiter's state %s was %s; rebuilt as if %d requests "
                "had just been sent (the next one waits about a second)",
                self.path,
                problem,
                self._limit,
            )
            self._rebuild(buffer, busy=True)

    def _problem(self, buffer: mmap.mmap | bytearray) -> str | None:
        body = self._size - _CRC.size
        (crc,) = _CRC.unpack_from(buffer, body)
        if zlib.crc32(buffer[:body]) != crc:
            return "corrupt (checksum)"
        magic, version, limit, boot, qps, next_slot, last_sent, cap, _, seen, count, head = (
            _HEADER.unpack_from(buffer, 0)
        )
        if magic != _MAGIC or version != LAYOUT_VERSION:
            return "not a state file of this layout"
        if limit != self._limit or qps != self._qps or count > limit or head >= limit:
            return "of another shape"
        if boot != _BOOT_ID:
            return "stale"  # another boot: its times are on a clock that no longer runs
        ahead = self._now() + _MOST_AHEAD_SECONDS
        newest = SharedLog(buffer, self._limit).newest_at()
        if not (next_slot <= ahead and last_sent <= ahead and newest <= ahead and seen <= ahead):
            return "ahead of the clock"
        if not (cap >= 0 and cap < float("inf")):
            return "corrupt (rate cap)"
        return None

    def _rebuild(self, buffer: mmap.mmap | bytearray, *, busy: bool) -> None:
        now = self._now()
        buffer[:] = bytes(self._size)
        _HEADER.pack_into(
            buffer, 0, _MAGIC, LAYOUT_VERSION, self._limit, _BOOT_ID, self._qps,
            now, float("-inf"), 0.0, float("inf"), float("-inf"), 0, 0,
        )  # fmt: skip
        if busy:
            # Unknown recent sends: assume a full window's worth just now, so nothing
            # overfills whatever really was sent.
            log = SharedLog(buffer, self._limit)
            for _ in range(self._limit):
                log.record(now, sent=now, window=self._rebuild_window, owner=0)
        self._seal(buffer)

    def _seal(self, buffer: mmap.mmap | bytearray) -> None:
        body = self._size - _CRC.size
        _CRC.pack_into(buffer, body, zlib.crc32(buffer[:body]))

    def _current(self) -> mmap.mmap | bytearray:
        """The mapping, reopened in a forked child (which shares its parent's lock) or
        when the file was replaced (a cleaned-up runtime directory)."""
        if self.path is None:
            assert self._map is not None
            return self._map
        if self._pid != os.getpid() or self._map is None:
            self._open(self.path)
        else:
            try:
                info = os.stat(self.path, follow_symlinks=False)
                replaced = (info.st_dev, info.st_ino) != self._identity
            except FileNotFoundError:
                replaced = True
            if replaced:
                try:
                    _private_directory(self.path.parent)
                    self._open(self.path)
                except HostStateUnavailableError as exc:
                    # Keep pacing on the old mapping (shared with whoever still has it)
                    # rather than fail a request; say so once.
                    if not self._warned_replaced:
                        self._warned_replaced = True
                        logger.warning(
                            "rtc_segment: the host limiter's state %s was removed and cannot "
                            "be made again (%s); this process keeps its old copy, which new "
                            "processes will not share",
                            self.path,
                            exc,
                        )
        assert self._map is not None
        return self._map

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SharedLog]:
        """Hold the lock, check the state, and yield it; seal it again on the way out.

        Synchronous on purpose: the lock is never held across an ``await``.
        """
        with self._thread_lock:
            buffer = self._current()
            shared = self.path is not None
            if shared:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._check(buffer, fresh=False)
                log = SharedLog(buffer, self._limit)
                try:
                    yield log
                finally:
                    if log._dirty:
                        self._seal(buffer)
            finally:
                if shared:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
