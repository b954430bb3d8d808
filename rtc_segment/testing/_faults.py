"""Injected faults and delays: what can go wrong between a client and the service, on purpose.

A :class:`FaultPlan` decides, for every request, whether a fault replaces or alters its
answer. Two sources, checked in this order:

1. **scripts** -- ``plan.next(3, Fault.HTTP_503, room_id="r1")``: the next 3 requests that
   match the filter get that fault (scripts are consumed first-come, first-served);
2. **a mix** -- ``plan.set_mix({Fault.HTTP_503: 0.05, Fault.DROP: 0.02}, seed=7)``: each
   request draws once from a :class:`random.Random` seeded with ``seed``, so the same
   sequence of requests meets the same faults on every run.

Faults act like a misbehaving proxy in front of the gateway: a faulted request is recorded,
but -- except for :attr:`Fault.SLOW` -- it never reaches the service. It does not count
toward the QPS window, is not a read of its task and advances no lifecycle. (A
:attr:`Fault.TRUNCATED_BODY` still carries the first half of the answer the service
*would* have given, computed without side effects.)

Delays are models from :class:`Latency`, drawn from a seeded RNG: ``Emulator(latency=...)``
delays the answer, ``Emulator(forward_delay=...)`` delays the moment a request reaches the
service (and is counted against the ceiling).
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from . import _envelope as errors
from ._envelope import JSON_HEADERS, Answer, Envelope, ServiceFailure

__all__ = ["Fault", "FaultPlan", "Latency", "LatencyModel", "fault_answer"]

#: A delay source: called with one of the emulator's seeded RNGs, returns seconds.
LatencyModel = Callable[[random.Random], float]


class Fault(enum.Enum):
    """The kinds of fault the emulator can inject."""

    HTTP_500 = "http_500"
    """HTTP 500 ``InternalError`` (CodeN 100014), gateway-style JSON body."""
    HTTP_502 = "http_502"
    """HTTP 502 ``InternalServiceError``: the gateway could not use the backend."""
    HTTP_503 = "http_503"
    """HTTP 503 ``ServiceUnavailableTemp``."""
    HTTP_504 = "http_504"
    """HTTP 504 ``InternalServiceTimeout`` (CodeN 100016)."""
    HTTP_429 = "http_429"
    """HTTP 429 ``FlowLimitExceeded`` with a ``Retry-After`` header (someone else used the
    quota); unlike the emulator's own ceiling, this does not depend on the request rate."""
    DROP = "drop"
    """The connection is closed without a complete answer. In process the transport raises
    :class:`httpx.RemoteProtocolError`; over the loopback server the answer declares a
    longer ``Content-Length`` than it sends and the connection is closed."""
    SLOW = "slow"
    """The request is served normally, but the answer comes ``slow_seconds`` late (default
    60 s): past any sensible client timeout. In process the transport honours the
    request's read timeout and raises :class:`httpx.ReadTimeout`."""
    TRUNCATED_BODY = "truncated_body"
    """HTTP 200 whose JSON body is cut in half (``Content-Length`` matches the cut body)."""
    HTML_BODY = "html_body"
    """HTTP 200 with an HTML page instead of JSON (a captive portal or misrouted proxy)."""
    EMPTY_BODY = "empty_body"
    """HTTP 200 with an empty body."""


class Latency:
    """Delay models for ``Emulator(latency=...)`` and ``Emulator(forward_delay=...)``.

    Every model is a callable taking one of the emulator's seeded RNGs (latency and forward
    delay each have their own), so delays are reproducible. A plain number also works as a
    fixed delay.
    """

    @staticmethod
    def fixed(seconds: float) -> LatencyModel:
        """Always ``seconds``."""
        _check_seconds("seconds", seconds)
        return lambda _rng: seconds

    @staticmethod
    def uniform(low: float, high: float) -> LatencyModel:
        """Uniform between ``low`` and ``high`` seconds."""
        _check_seconds("low", low)
        if not high >= low:
            raise ValueError(f"high must be >= low, got low={low!r}, high={high!r}")
        return lambda rng: rng.uniform(low, high)

    @staticmethod
    def exponential(
        mean: float, *, minimum: float = 0.0, maximum: float = math.inf
    ) -> LatencyModel:
        """``minimum`` plus an exponential delay of mean ``mean``, capped at ``maximum``."""
        _check_seconds("minimum", minimum)
        if not mean > 0:
            raise ValueError(f"mean must be > 0, got {mean!r}")
        return lambda rng: min(maximum, minimum + rng.expovariate(1.0 / mean))

    @staticmethod
    def lognormal(median: float, sigma: float = 0.5) -> LatencyModel:
        """Log-normal around ``median`` seconds: a long right tail, like real networks."""
        if not median > 0:
            raise ValueError(f"median must be > 0, got {median!r}")
        mu = math.log(median)
        return lambda rng: rng.lognormvariate(mu, sigma)


def _check_seconds(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")


def as_delay_model(name: str, delay: float | LatencyModel | None) -> LatencyModel | None:
    """Normalise ``Emulator(latency=...)`` and the like: ``None``/0 means none, a number is
    fixed, a model is kept; anything else is an error naming the argument ``name``."""
    if delay is None:
        return None
    if callable(delay):
        return delay
    _check_seconds(name, delay)
    return None if delay == 0 else Latency.fixed(float(delay))


def draw(model: LatencyModel | None, rng: random.Random) -> float:
    """One delay from ``model`` in seconds; none, or a negative draw, is 0."""
    if model is None:
        return 0.0
    return max(0.0, model(rng))


@attrs.frozen
class _Target:
    """Which requests a script applies to; ``None`` matches anything."""

    action: str | None = None
    app_id: str | None = None
    room_id: str | None = None
    task_id: str | None = None

    def matches(self, action: str | None, params: Mapping[str, str]) -> bool:
        return (
            (self.action is None or self.action == action)
            and (self.app_id is None or self.app_id == params.get("AppId"))
            and (self.room_id is None or self.room_id == params.get("RoomId"))
            and (self.task_id is None or self.task_id == params.get("TaskId"))
        )


@attrs.define
class _Script:
    fault: Fault
    remaining: int
    target: _Target


class FaultPlan:
    """Which requests meet which faults; ``emulator.faults``.

    Attributes:
        slow_seconds: How late a :attr:`Fault.SLOW` answer is.
        retry_after: The ``Retry-After`` value (seconds) of a :attr:`Fault.HTTP_429`.
    """

    def __init__(self, *, seed: int | None = 0) -> None:
        self._scripts: deque[_Script] = deque()
        self._mix: tuple[tuple[float, Fault], ...] = ()
        self._rng = random.Random(seed)
        self.slow_seconds = 60.0
        self.retry_after = 1

    def set_mix(
        self,
        mix: Mapping[Fault, float],
        *,
        seed: int | None = 0,
        slow_seconds: float | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Give every request a chance of each fault.

        Args:
            mix: Probability per fault kind, each in [0, 1], summing to at most 1.
            seed: Seeds the draw, so that the same requests meet the same faults each run.
            slow_seconds: Changes :attr:`slow_seconds`.
            retry_after: Changes :attr:`retry_after`.
        """
        total = 0.0
        cumulative: list[tuple[float, Fault]] = []
        for fault, probability in mix.items():
            if not isinstance(fault, Fault):
                raise TypeError(f"mix keys must be Fault members, not {fault!r}")
            if not 0 <= probability <= 1:
                raise ValueError(f"probability of {fault} must be in [0, 1], got {probability!r}")
            total += probability
            cumulative.append((total, fault))
        if total > 1 + 1e-9:
            raise ValueError(f"probabilities must sum to at most 1, got {total!r}")
        self._mix = tuple(cumulative)
        self._rng = random.Random(seed)
        self._configure(slow_seconds, retry_after)

    def next(
        self,
        count: int,
        fault: Fault,
        *,
        action: str | None = None,
        app_id: str | None = None,
        room_id: str | None = None,
        task_id: str | None = None,
        slow_seconds: float | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Give the next ``count`` requests matching the filter the ``fault``.

        The filter compares with the request's ``Action`` and its ``AppId``/``RoomId``/
        ``TaskId`` parameters; an omitted filter matches anything. Scripts are consumed
        in the order they were added and take precedence over the mix.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an int >= 1, got {count!r}")
        if not isinstance(fault, Fault):
            raise TypeError(f"fault must be a Fault member, not {fault!r}")
        self._scripts.append(_Script(fault, count, _Target(action, app_id, room_id, task_id)))
        self._configure(slow_seconds, retry_after)

    def clear(self) -> None:
        """Remove every script and the mix."""
        self._scripts.clear()
        self._mix = ()

    @property
    def pending(self) -> int:
        """How many scripted faults are still waiting for a matching request."""
        return sum(script.remaining for script in self._scripts)

    def _configure(self, slow_seconds: float | None, retry_after: int | None) -> None:
        if slow_seconds is not None:
            _check_seconds("slow_seconds", slow_seconds)
            self.slow_seconds = float(slow_seconds)
        if retry_after is not None:
            if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
                raise ValueError(f"retry_after must be an int >= 0, got {retry_after!r}")
            self.retry_after = retry_after

    def choose(self, action: str | None, params: Mapping[str, Any]) -> Fault | None:
        """The fault for one request, or ``None`` (called once per request, in order)."""
        for script in self._scripts:
            if script.target.matches(action, params):
                script.remaining -= 1
                if script.remaining == 0:
                    self._scripts.remove(script)
                return script.fault
        if self._mix:
            draw = self._rng.random()
            for bound, fault in self._mix:
                if draw < bound:
                    return fault
        return None


_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>Service notice</h1><p>The page you requested is temporarily unavailable."
    b"</p></body></html>\n"
)
_HTML_HEADERS = (("content-type", "text/html; charset=utf-8"),)


def _failure(fault: Fault, retry_after: int) -> ServiceFailure | None:
    if fault is Fault.HTTP_500:
        return errors.internal_error("An internal error occurred; please retry later")
    if fault is Fault.HTTP_502:
        return errors.internal_service_error("The service could not process the request")
    if fault is Fault.HTTP_503:
        return errors.service_unavailable("The service is temporarily unavailable")
    if fault is Fault.HTTP_504:
        return errors.internal_service_timeout("The service timed out")
    if fault is Fault.HTTP_429:
        return errors.flow_limit_exceeded(
            "Request was denied due to request throttling",
            headers=(("retry-after", str(retry_after)),),
        )
    return None


def fault_answer(
    fault: Fault, envelope: Envelope, *, retry_after: int, would_be: Callable[[], Answer]
) -> tuple[Answer, str | None]:
    """The answer ``fault`` gives in place of the service's, and its error code, if any.

    Args:
        fault: Any fault but :attr:`Fault.SLOW` (which the service answers, late).
        envelope: The metadata of the answer.
        retry_after: The ``Retry-After`` of an :attr:`Fault.HTTP_429`.
        would_be: The service's answer computed without side effects; called only for
            :attr:`Fault.TRUNCATED_BODY`, which sends the first half of its body.
    """
    failure = _failure(fault, retry_after)
    if failure is not None:
        return envelope.failure(failure), failure.code
    if fault is Fault.DROP:
        return Answer(200, JSON_HEADERS, b"", drop=True), None
    if fault is Fault.HTML_BODY:
        return Answer(200, _HTML_HEADERS, _HTML_PAGE), None
    if fault is Fault.EMPTY_BODY:
        return Answer(200, JSON_HEADERS, b""), None
    if fault is Fault.TRUNCATED_BODY:
        body = would_be().body
        return Answer(200, JSON_HEADERS, body[: len(body) // 2]), None
    raise ValueError(f"{fault} is not answered in place of the service")
