"""One value per event loop: how limiters keep their asyncio state (locks, timers) apart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

_T = TypeVar("_T")


class PerLoop(Generic[_T]):
    """One value per event loop, made on first use in that loop.

    The values hold their loop (futures, timers), so a weak mapping could never let a loop
    go; instead the values of closed loops are dropped whenever a new loop arrives.
    """

    __slots__ = ("_factory", "_values")

    def __init__(self, factory: Callable[[], _T]) -> None:
        self._factory = factory
        self._values: dict[asyncio.AbstractEventLoop, _T] = {}

    def get(self) -> _T:
        """The value of the running loop."""
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is None:
            for old in [old for old in self._values if old.is_closed()]:
                del self._values[old]
            value = self._values[loop] = self._factory()
        return value

    def running(self) -> _T | None:
        """The value of the running loop, if it has one (``None`` outside a loop too)."""
        try:
            return self._values.get(asyncio.get_running_loop())
        except RuntimeError:
            return None

    def __len__(self) -> int:
        return len(self._values)
