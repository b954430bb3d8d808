"""Every use of another library's private internals, in one place, each self-checked.

The library's guarantees lean on four details that the libraries below us do not publish.
Each is touched only here, each is checked -- at import where that is possible, else at
first use -- so that a release that changes it fails loudly instead of quietly breaking a
guarantee, and each has a test in ``tests/test_compat.py``. ``pyproject.toml`` bounds these
dependencies at the newest line we have tested.

* aiolimiter (``<1.4``): :class:`PacedBucket` reads and sets the bucket's level and drain
  rate (``_level``, ``_rate_per_sec``), reads its loop clock (``_loop``) and hooks its drain
  step (``_leak``). Pacing exactly -- never more than the ceiling in any sliding second --
  needs all four; aiolimiter has no public API for them. On a loop whose timers tick in
  milliseconds (uvloop) it also re-arms the wake-up timer (``_wake_next``,
  ``_waker_handle``, ``_waiters``), which would otherwise spin.
* httpx (``<1``): :func:`transport_for_url` (``AsyncClient._transport_for_url``) lets the
  client hand requests straight to the transport ``AsyncClient.send`` would pick, and
  :func:`url_maker` swaps a pre-encoded query into a parsed URL (``URL._uri_reference``),
  falling back to parsing when that no longer yields the same URL.
* aiohttp (via httpx-aiohttp, ``<0.3``): :func:`disable_connection_retry` turns off
  ``ClientSession._retry_connection``, aiohttp's silent second send of a GET whose
  connection failed -- a send our limiter, signer and counters would never see.
* httpcore/anyio: :func:`warm_up_http_stack` imports the modules httpcore loads on its first
  request; if they moved, only a one-off latency is lost, so this one never fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
from aiolimiter import AsyncLimiter

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "PacedBucket",
    "disable_connection_retry",
    "transport_for_url",
    "url_maker",
    "warm_up_http_stack",
]


class IncompatibleDependencyError(ImportError):
    """A dependency changed an internal detail this library relies on."""


def _incompatible(library: str, version: str, detail: str) -> IncompatibleDependencyError:
    return IncompatibleDependencyError(
        f"rtc_segment does not support {library} {version}: {detail}. Install the version "
        "range rtc-segment declares (pip install 'rtc-segment' resolves it) and report this."
    )


# -- aiolimiter ------------------------------------------------------------------------------

# A wake-up this close to its due time counts as on time (see PacedBucket._leak).
_EARLY_TOLERANCE_SECONDS = 1e-6
# How far below "one more request fits" a snapped level is put: far enough that aiolimiter's
# two differently rounded comparisons (level + 1 <= capacity, 1 - capacity + level <= 0)
# both agree that it fits.
_HAIR = 1e-9


def _timer_tick(loop: asyncio.AbstractEventLoop) -> float:
    """How far apart a loop's timers can tell times: 0 for asyncio's own loops (they run a
    timer once due, on a nanosecond clock), a millisecond for any other (uvloop: libuv's)."""
    return 0.0 if isinstance(loop, asyncio.BaseEventLoop) else 1e-3


def _check_aiolimiter() -> None:
    import aiolimiter

    version = getattr(aiolimiter, "__version__", "?")
    slots = set(getattr(AsyncLimiter, "__slots__", ()))
    for name in ("_level", "_rate_per_sec", "_waiters", "_waker_handle"):
        if name not in slots:
            raise _incompatible("aiolimiter", version, f"AsyncLimiter has no {name} slot")
    for name in ("_leak", "_loop", "_wake_next"):
        if not hasattr(AsyncLimiter, name):
            raise _incompatible("aiolimiter", version, f"AsyncLimiter has no {name}")
    probe = AsyncLimiter(2, 4)
    if getattr(probe, "_rate_per_sec", None) != 0.5 or getattr(probe, "_level", None) != 0:
        raise _incompatible("aiolimiter", version, "AsyncLimiter's bucket state changed meaning")


_check_aiolimiter()


class PacedBucket(AsyncLimiter):
    """``aiolimiter.AsyncLimiter`` with its level, drain rate and clock exposed.

    It also forgives a wake-up a clock tick early, or a rounding error late. aiolimiter sets
    its timer for exactly when the bucket will have drained enough, but asyncio runs a timer
    that is due within the clock's resolution, looptime rounds the loop's time to 1 us, and
    the level is float arithmetic. The waiter then finds a sliver left, and aiolimiter sets a
    timer for that sliver -- due "now" again. On a clock that does not move until the loop
    is idle (looptime) that repeats forever; on a coarse clock (Windows, ~16 ms) it spins
    until the clock ticks. A level within a microsecond's drain of letting one more request
    through is taken as letting it through.
    """

    __slots__ = ()

    def _wake_next(self, *args: object) -> None:
        # aiolimiter arms a timer for exactly when the first waiter fits. uvloop's timers
        # and clock move in whole milliseconds (libuv's): a timer due within half of one
        # runs at once, finds the clock where it was, and aiolimiter arms it again --
        # hundreds of wake-ups per request, a busy loop until the clock ticks. One due
        # within a tick is put one tick away instead: as late as the spin would have let
        # it go, without spinning. (asyncio's loops run a timer when it is due.)
        super()._wake_next(*args)
        handle, waiters = self._waker_handle, self._waiters
        if handle is None or not waiters:
            return
        loop = self._loop
        tick = _timer_tick(loop)
        due_in = (waiters[0][0] - self.max_rate + self._level) / self._rate_per_sec
        if due_in < tick:
            handle.cancel()
            self._waker_handle = loop.call_later(tick, self._wake_next)

    def now(self) -> float:
        """The bucket's clock: the running loop's time."""
        return self._loop.time()

    @property
    def level(self) -> float:
        """How full the bucket is, in requests (drained up to now)."""
        self._leak()
        return float(self._level)

    def add(self, amount: float) -> None:
        """Put ``amount`` more into the bucket (e.g. charge one request extra)."""
        self._leak()
        self._level += amount

    @property
    def rate(self) -> float:
        """How fast the bucket drains, in requests per second."""
        return float(self._rate_per_sec)

    @rate.setter
    def rate(self, value: float) -> None:
        # Drain what the old rate owes up to now first, so the change is not retroactive.
        self._leak()
        self._rate_per_sec = value
        self.time_period = self.max_rate / value
        self._wake_next()

    def _leak(self) -> None:
        super()._leak()
        fits_at = self.max_rate - 1  # the level at which one more request fits
        sliver = self._rate_per_sec * _EARLY_TOLERANCE_SECONDS
        if fits_at - _HAIR < self._level <= fits_at + sliver:
            self._level = fits_at - _HAIR


# -- httpx -----------------------------------------------------------------------------------


def _check_httpx() -> None:
    if not callable(getattr(httpx.AsyncClient, "_transport_for_url", None)):
        raise _incompatible("httpx", httpx.__version__, "AsyncClient._transport_for_url is gone")


_check_httpx()


def transport_for_url(client: httpx.AsyncClient, url: httpx.URL) -> httpx.AsyncBaseTransport:
    """The transport ``client.send`` would use for ``url`` (mounts and proxies included)."""
    transport: httpx.AsyncBaseTransport = client._transport_for_url(url)
    return transport


_SAMPLE_QUERY = "Action=GetSegmentTask&AppId=a%40b&RoomId=r.1&TaskId=t-_~1%2F&Version=2022-06-01"


def url_maker(root: httpx.URL) -> Callable[[str], httpx.URL]:
    """A function from an already percent-encoded query string to the URL ``root?query``.

    The signer percent-encodes every byte outside the unreserved set, so the query needs no
    parsing or quoting (httpx parses and re-quotes a URL string in ~25 us); the fast path
    swaps it into the root's parsed form. It is used only if it yields exactly what parsing
    the full URL string yields -- else httpx's internals changed, and parsing is used.
    """
    prefix = str(root)

    def parsed(query: str) -> httpx.URL:
        return httpx.URL(f"{prefix}?{query}")

    reference = getattr(root, "_uri_reference", None)
    replace = getattr(reference, "_replace", None)
    if replace is None:
        return parsed

    def swapped(query: str) -> httpx.URL:
        url = httpx.URL.__new__(httpx.URL)
        url._uri_reference = replace(query=query)
        return url

    try:
        fast, slow = swapped(_SAMPLE_QUERY), parsed(_SAMPLE_QUERY)
        same = fast == slow and fast.raw_path == slow.raw_path and str(fast) == str(slow)
    except Exception:
        same = False
    return swapped if same else parsed


# -- aiohttp ---------------------------------------------------------------------------------


def disable_connection_retry(session: aiohttp.ClientSession) -> None:
    """Stop aiohttp from silently sending a GET again when its connection failed.

    Raises:
        IncompatibleDependencyError: aiohttp no longer has the switch; sending on would lose
            the guarantee that every send is paced, signed and counted.
    """
    if not hasattr(session, "_retry_connection"):
        import aiohttp

        raise _incompatible(
            "aiohttp", aiohttp.__version__, "ClientSession._retry_connection is gone"
        )
    session._retry_connection = False


# -- httpcore --------------------------------------------------------------------------------


def warm_up_http_stack() -> None:
    """Import what httpcore imports on its first request (~20 ms), ahead of time.

    Paid on the first request, that delay holds it back behind the ones after it, which
    squeezes arrivals together at the server; paid when a client opens, it costs nothing.
    """
    try:
        import anyio._backends._asyncio  # noqa: F401
        import httpcore._backends.anyio  # noqa: F401
    except ImportError:  # pragma: no cover - another httpcore layout: only a latency cost
        pass
