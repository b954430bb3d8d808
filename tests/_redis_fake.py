"""A Redis server simulated in this process, for RedisRateLimiter's tests in virtual time.

The real server's clock cannot be virtualised (``tests/test_redis.py`` runs against one in
real time); this one reads the event loop's clock, ``skew`` seconds ahead, so the limiter's
own logic -- the waits it computes from the slots it is handed, the reports it sends, what
it does when Redis is down, hung, or drops an answer -- runs in virtual time (looptime),
deterministically, in milliseconds.

The script it runs is plain GCRA (a slot every ``interval`` from the reservation's ``now``):
the send log the real script keeps is exercised by ``tests/test_redis.py``, against a real
server. What this fake checks is what the limiter sends: the command (by name, any case, as
Redis), the script's SHA-1 (EVALSHA answers NOSCRIPT until EVAL loaded it), one key, and
integer arguments (redis-py refuses ``None``) in the script's order, reports in pairs.

A connection behaves as a socket does: answers come back in order, one that comes after
its reader gave up stays on the connection for the next reader unless the connection was
dropped (``disconnect``), and a dropped connection connects anew on its next command.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError

REFUSED = "Error 111 connecting to 127.0.0.1:6379. Connection refused."
CLOSED = "Connection closed by server."


@dataclass
class Reservation:
    """One run of the script: what the limiter sent, and what it was answered."""

    key: str
    interval: int
    limit: int
    window: int
    unreported: int
    seen: int
    reports: list[tuple[int, int]]
    now: int
    slot: int


@dataclass
class FakeRedis:
    """The server: its clock, its schedule, the scripts it knows, and the faults to play."""

    skew: float = 1000.0  # its clock minus the loop's, in seconds
    latency: float = 0.004  # a round trip, in seconds: the script runs half way
    tat: int = 0
    scripts: set[str] = field(default_factory=set)
    commands: list[str] = field(default_factory=list)
    reservations: list[Reservation] = field(default_factory=list)
    down: bool = False  # stopped: connections are closed, connecting is refused
    hung: bool = False  # commands wait unanswered until resume()
    drop_answers: int = 0  # the next n scripts run, then their connection breaks
    error: str | None = None  # the next script is answered with this error
    connections: int = 0  # connections opened
    attempts: list[float] = field(default_factory=list)  # when each command or connect began
    _held: list[tuple[Any, tuple[Any, ...], asyncio.Future[Any]]] = field(default_factory=list)

    def clock_us(self) -> int:
        return round((asyncio.get_running_loop().time() + self.skew) * 1_000_000)

    def loop_time_of(self, slot_us: int) -> float:
        """A time on this server's clock, on the loop's."""
        return slot_us / 1_000_000 - self.skew

    def flush_scripts(self) -> None:
        self.scripts.clear()

    def resume(self) -> None:
        """A hung server runs again: it runs what it was sent, and answers."""
        self.hung = False
        held, self._held = self._held, []
        for connection, command, answer in held:
            self._run_and_answer(connection, command, answer)

    def receive(
        self, connection: Any, command: tuple[Any, ...], answer: asyncio.Future[Any]
    ) -> None:
        """A command is sent: it reaches the server half a round trip later."""
        loop = asyncio.get_running_loop()
        loop.call_later(self.latency / 2, self._arrived, connection, command, answer)

    def _arrived(
        self, connection: Any, command: tuple[Any, ...], answer: asyncio.Future[Any]
    ) -> None:
        if self.hung:
            self._held.append((connection, command, answer))
        else:
            self._run_and_answer(connection, command, answer)

    def _run_and_answer(
        self, connection: Any, command: tuple[Any, ...], answer: asyncio.Future[Any]
    ) -> None:
        result: Any = self.execute(command)
        if self.drop_answers and not isinstance(result, ResponseError):
            self.drop_answers -= 1
            result = RedisConnectionError(CLOSED)
        asyncio.get_running_loop().call_later(self.latency / 2, _deliver, answer, result)

    def execute(self, command: tuple[Any, ...]) -> Any:
        """Run one command; its answer (a list) or its error answer (a ResponseError)."""
        name = str(command[0]).upper()
        self.commands.append(name)
        if name not in ("EVALSHA", "EVAL"):
            return ResponseError(f"unknown command '{command[0]}'")
        script, numkeys, *rest = command[1:]
        if numkeys != 1 or len(rest) < 6 or (len(rest) - 6) % 2:
            return ResponseError("wrong number of keys or arguments for the limiter's script")
        if not all(isinstance(value, int) for value in rest[1:]):
            return ResponseError("value is not an integer or out of range")
        if name == "EVAL":
            self.scripts.add(hashlib.sha1(str(script).encode(), usedforsecurity=False).hexdigest())
        elif script not in self.scripts:
            return NoScriptError("No matching script. Please use EVAL.")
        if self.error is not None:
            error, self.error = self.error, None
            return ResponseError(error)
        key, interval, limit, window, unreported, seen, *flat = rest
        now = self.clock_us()
        slot = max(self.tat, now)
        self.tat = slot + interval
        reports = list(zip(flat[::2], flat[1::2], strict=True))
        self.reservations.append(
            Reservation(str(key), interval, limit, window, unreported, seen, reports, now, slot)
        )
        return [slot, now]


def _deliver(answer: asyncio.Future[Any], result: Any) -> None:
    if not answer.done():
        answer.set_result(result)


def _encodable(value: object) -> bool:
    return isinstance(value, str | bytes | int | float) and not isinstance(value, bool)


class FakeConnection:
    """One connection to a FakeRedis, with the parts of redis-py's the limiter uses."""

    def __init__(self, server: FakeRedis) -> None:
        self.server = server
        self.connected = False
        self.answers: deque[asyncio.Future[Any]] = deque()

    async def send_command(self, *command: Any) -> None:
        if not all(_encodable(value) for value in command):
            raise DataError("Invalid input: a command argument is not bytes, str or a number")
        if self.connected and self.server.down:  # a stopped server closed it
            self.connected = False
            self.answers.clear()
            raise RedisConnectionError(CLOSED)
        if not self.connected:
            self.server.attempts.append(asyncio.get_running_loop().time())
            await asyncio.sleep(0)
            if self.server.down:
                raise RedisConnectionError(REFUSED)
            self.connected = True
            self.server.connections += 1
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.answers.append(answer)
        self.server.receive(self, command, answer)

    async def read_response(self) -> Any:
        if not self.connected or not self.answers:
            raise RedisConnectionError("not connected")
        # An answer stays on the connection until read: a reader that gives up leaves it
        # there for the next one (as the socket would), unless the connection is dropped.
        result = await asyncio.shield(self.answers[0])
        self.answers.popleft()
        if isinstance(result, RedisConnectionError):
            self.connected = False
            self.answers.clear()
        if isinstance(result, BaseException):
            raise result
        return result

    async def disconnect(self, nowait: bool = False) -> None:
        self.connected = False
        self.answers.clear()


class FakePool(ConnectionPool):
    """A connection pool of FakeConnections (a real ConnectionPool to the limiter)."""

    def __init__(self, server: FakeRedis, max_connections: int = 64) -> None:
        super().__init__(max_connections=max_connections)
        self.server = server
        self.free: list[FakeConnection] = []
        self.created = 0
        self.in_use = 0
        self.most_in_use = 0
        self.checkouts: list[tuple[Any, ...]] = []

    async def get_connection(self, *args: Any, **kwargs: Any) -> FakeConnection:  # type: ignore[override]
        self.checkouts.append(args)
        if self.free:
            connection = self.free.pop()
        else:
            connection = FakeConnection(self.server)
            self.created += 1
        self.in_use += 1
        self.most_in_use = max(self.most_in_use, self.in_use)
        return connection

    async def release(self, connection: Any) -> None:  # type: ignore[override]
        assert isinstance(connection, FakeConnection), connection
        self.in_use -= 1
        self.free.append(connection)


class CommandNamePool(FakePool):
    """A pool whose get_connection requires a command name, as redis-py's before 5.3."""

    async def get_connection(  # type: ignore[override]
        self, command_name: str, *keys: Any, **options: Any
    ) -> FakeConnection:
        return await super().get_connection(command_name, *keys, **options)


class FakeCluster(RedisCluster):
    """A cluster client (a real RedisCluster to the limiter) whose commands go to a
    FakeRedis: EVALSHA and EVAL through its command API, one round trip each."""

    server: FakeRedis

    @classmethod
    def of(cls, server: FakeRedis) -> FakeCluster:
        cluster = cls.__new__(cls)  # no nodes to discover
        # "Not initialised yet": no "unclosed client" warning when it is collected (redis-py
        # versions differ on whether its __del__ checks that the attribute exists).
        cluster._initialize = True
        cluster.server = server
        return cluster

    async def evalsha(self, *args: Any) -> Any:  # type: ignore[override]
        return await self._command("EVALSHA", *args)

    async def eval(self, *args: Any) -> Any:  # type: ignore[override]
        return await self._command("EVAL", *args)

    async def _command(self, *command: Any) -> Any:
        if not all(_encodable(value) for value in command):
            raise DataError("Invalid input: a command argument is not bytes, str or a number")
        await asyncio.sleep(self.server.latency / 2)
        result = self.server.execute(command)
        await asyncio.sleep(self.server.latency / 2)
        if isinstance(result, BaseException):
            raise result
        return result


def slots(server: FakeRedis) -> Iterator[int]:
    return (reservation.slot for reservation in server.reservations)
