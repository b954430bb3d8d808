"""The service's QPS ceilings: one sliding 1-second window per account and action.

The documented ceilings are per action and per Volcengine *account*: every AppId and every
access key of one account share them (https://www.volcengine.com/docs/6348/69828). The
documentation gives each action's ceiling without reference to a version, with the same
number for 2022-06-01 and 2023-11-01, and says nothing about separate quotas per version;
so the window is keyed by the action's name alone, and both versions of an action draw on
one ceiling -- the conservative reading, and the one a client can rely on either way.

A request is counted at the moment it arrives, and only when it is admitted: gateway
limiters (token buckets, admitted-request logs) charge what they let through, so a client
that backs off is not punished further for the requests that were refused.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from . import _envelope as errors
from ._clock import RESOLUTION

__all__ = ["Quota", "check_qps"]


def check_qps(value: float | None, name: str = "qps") -> float | None:
    """A ceiling as given to the emulator: a positive number, or ``None`` for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number or None, got {value!r}")
    return float(value)


class Quota:
    """Per-account, per-action sliding windows of admitted arrivals.

    Args:
        ceilings: Requests per second by action name; ``None`` (or an action not listed)
            means no ceiling.
    """

    def __init__(self, ceilings: Mapping[str, float | None]) -> None:
        self._ceilings: dict[str, float | None] = {}
        for action, qps in ceilings.items():
            self.set_ceiling(action, qps)
        self._windows: dict[tuple[str, str], deque[float]] = {}

    def ceiling(self, action: str) -> float | None:
        """The ceiling of ``action`` (``None``: unlimited)."""
        return self._ceilings.get(action)

    def set_ceiling(self, action: str, qps: float | None, *, name: str = "qps") -> None:
        """Change the ceiling of ``action``; the arrivals already counted stay counted.

        Raises:
            ValueError: ``qps`` is not a positive number or ``None`` (the message calls it
                ``name``).
        """
        self._ceilings[action] = check_qps(qps, name)

    def admit(self, account: str, action: str, now: float, *, dry: bool = False) -> None:
        """Count one arrival at ``now``, or refuse it with ``FlowLimitExceeded`` (HTTP 429).

        Args:
            account: Whose quota the request uses.
            action: The action's name (whatever the version).
            now: The arrival time on the emulator's monotonic clock.
            dry: Check without counting (for an answer computed without side effects).
        """
        ceiling = self._ceilings.get(action)
        if ceiling is None:
            return
        window = self._windows.get((account, action))
        if window is None:
            window = self._windows[account, action] = deque()
        horizon = now - 1.0 + RESOLUTION
        while window and window[0] <= horizon:
            window.popleft()
        if len(window) >= ceiling:
            raise errors.flow_limit_exceeded(
                f"Request was denied due to request throttling: the account's ceiling of "
                f"{ceiling:g} requests per second for {action} was exceeded"
            )
        if not dry:
            window.append(now)
