"""Guarantee 3: hostile input.

Every public entry point given a wrong type, an empty or blank string, an over-long id,
unicode, control characters or ``None`` raises ``TypeError``/``ValueError`` whose message
names the argument -- before any request (the emulator's record stays empty). Fan-out and
watching report an invalid key as that key's outcome or event instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from rtc_segment import (
    Backoff,
    Credentials,
    LocalRateLimiter,
    SegmentClient,
    StorageConfig,
    StorageType,
    Stream,
    TaskKey,
    TosConfig,
)
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

from ._support import emulator_client

BAD_IDS: list[Any] = [
    None,
    1,
    1.5,
    b"room",
    ["room"],
    "",
    " ",
    "\t",
    "room ",
    " room",
    "ro om",
    "room\n",
    "x" * 129,
    "é",
    "房间",
    "ｒｏｏｍ",  # full-width letters
    "a\x00b",
    "a\x1bb",
    "room\u200b",  # zero-width space
    "../etc",
    "a/b",
    "%41",
    "a?b=c&d",
    "a#b",
]
ID_ARGS = ("app_id", "room_id", "task_id")
GOOD = {"app_id": "app", "room_id": "room", "task_id": "task"}
STORAGE = StorageConfig(type=StorageType.TOS, tos_config=TosConfig(account_id="1", bucket="b"))


def expected_error(value: object) -> type[Exception]:
    return ValueError if isinstance(value, str) else TypeError


@pytest.fixture
def emulator() -> Emulator:
    emulator = Emulator()
    emulator.add_task("app", "room", "task")
    return emulator


async def assert_rejected(
    emulator: Emulator, call: Callable[[SegmentClient], Any], error: type[Exception], name: str
) -> None:
    async def invoke(client: SegmentClient) -> None:
        result = call(client)
        if hasattr(result, "__anext__"):  # watch_segment_task: checked on first use at latest
            await result.__anext__()
        else:
            await result

    async with emulator_client(emulator) as client:
        with pytest.raises(error) as caught:
            await invoke(client)
        assert name in str(caught.value)
    assert emulator.count() == 0


# -- ids ---------------------------------------------------------------------------------

ENTRY_POINTS: dict[str, Callable[..., Any]] = {
    "get_segment_task": lambda c, ids: c.get_segment_task(**ids),
    "wait_for_segment_task": lambda c, ids: c.wait_for_segment_task(**ids),
    "watch_segment_task": lambda c, ids: c.watch_segment_task(**ids),
    "start_segment": lambda c, ids: c.start_segment(**ids, storage_config=STORAGE),
    "update_segment": lambda c, ids: c.update_segment(**ids, duration=10),
    "stop_segment": lambda c, ids: c.stop_segment(**ids),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("name", ID_ARGS)
@pytest.mark.parametrize("value", BAD_IDS, ids=repr)
async def test_bad_ids_are_refused_before_sending(
    emulator: Emulator, entry: str, name: str, value: object
) -> None:
    ids = {**GOOD, name: value}
    await assert_rejected(
        emulator, lambda c: ENTRY_POINTS[entry](c, ids), expected_error(value), name
    )


@pytest.mark.parametrize("value", BAD_IDS, ids=repr)
async def test_fan_out_reports_bad_keys_as_outcomes(emulator: Emulator, value: object) -> None:
    keys: list[Any] = [
        ("app", "room", "task"),
        ("app", value, "task"),
        (value, "room", "task"),
        ("app", "room", value),
    ]
    async with emulator_client(emulator) as client:
        streamed = [outcome async for outcome in client.get_segment_tasks(keys)]
        gathered = await client.gather_segment_tasks(keys)
    for outcomes in (sorted(streamed, key=lambda o: keys.index(tuple(o.key))), gathered):
        assert outcomes[0].ok
        for outcome, name in zip(outcomes[1:], ("room_id", "app_id", "task_id"), strict=True):
            assert isinstance(outcome.error, expected_error(value))
            assert name in str(outcome.error)
    # Only the good key was ever sent, once per fan-out.
    assert emulator.count() == 2
    assert {record.key for record in emulator.requests} == {TaskKey("app", "room", "task")}


@pytest.mark.parametrize("value", BAD_IDS, ids=repr)
async def test_watch_reports_bad_keys_as_final_events(emulator: Emulator, value: object) -> None:
    async with emulator_client(emulator) as client:
        watch = client.watch_segment_tasks([("app", value, "task")])
        events = [event async for event in watch]
    assert len(events) == 1
    assert events[0].final
    assert isinstance(events[0].error, expected_error(value))
    assert "room_id" in str(events[0].error)
    assert emulator.count() == 0


async def settle(result: object) -> None:
    if hasattr(result, "__await__"):
        await result  # type: ignore[misc]


@pytest.mark.parametrize(
    "keys", [None, 5, "app/room/task", ("app", "room", "task"), TaskKey("a", "r", "t")], ids=repr
)
async def test_fan_out_refuses_what_is_not_a_collection_of_keys(
    emulator: Emulator, keys: object
) -> None:
    async with emulator_client(emulator) as client:
        for call in (
            lambda: client.get_segment_tasks(keys),  # type: ignore[arg-type]
            lambda: client.gather_segment_tasks(keys),  # type: ignore[arg-type]
            lambda: client.watch_segment_tasks(keys),  # type: ignore[arg-type]
        ):
            with pytest.raises(TypeError, match="keys"):
                await settle(call())
    assert emulator.count() == 0


# -- other arguments of the calls ----------------------------------------------------------

NUMBERS_BAD: list[tuple[Any, type[Exception]]] = [
    (None, TypeError),
    ("5", TypeError),
    (True, TypeError),
    (0, ValueError),
    (-1, ValueError),
    (float("nan"), ValueError),
    (float("inf"), ValueError),
]


@pytest.mark.parametrize(("value", "error"), NUMBERS_BAD, ids=repr)
@pytest.mark.parametrize(
    "entry",
    [
        lambda c, v: c.wait_for_segment_task(**GOOD, poll_interval=v),
        lambda c, v: c.watch_segment_task(**GOOD, poll_interval=v),
        lambda c, v: c.watch_segment_tasks([tuple(GOOD.values())], poll_interval=v),
    ],
    ids=["wait_for", "watch_one", "watch_many"],
)
async def test_bad_poll_intervals(
    emulator: Emulator, entry: Callable[..., Any], value: object, error: type[Exception]
) -> None:
    async def call(client: SegmentClient) -> Any:
        result = entry(client, value)
        if hasattr(result, "__anext__"):
            return await result.__anext__()
        return await result

    await assert_rejected(emulator, call, error, "poll_interval")


@pytest.mark.parametrize(
    ("value", "error"),
    [(None, None), ("1", TypeError), (1.5, TypeError), (True, TypeError), (0, ValueError)],
    ids=repr,
)
async def test_bad_concurrency(emulator: Emulator, value: object, error: Any) -> None:
    if error is None:
        return  # None is the default
    keys = [tuple(GOOD.values())]
    await assert_rejected(
        emulator, lambda c: c.gather_segment_tasks(keys, concurrency=value), error, "concurrency"
    )
    await assert_rejected(
        emulator,
        lambda c: c.get_segment_tasks(keys, concurrency=value).__anext__(),
        error,
        "concurrency",
    )


@pytest.mark.parametrize(
    ("value", "error"),
    [("5", TypeError), (True, TypeError), (-1, ValueError), (float("nan"), ValueError)],
    ids=repr,
)
async def test_bad_wait_timeout(emulator: Emulator, value: object, error: Any) -> None:
    await assert_rejected(
        emulator, lambda c: c.wait_for_segment_task(**GOOD, timeout=value), error, "timeout"
    )


START_BAD: list[tuple[str, Any, type[Exception]]] = [
    ("storage_config", None, TypeError),
    ("storage_config", "tos", TypeError),
    ("storage_config", StorageConfig(type=StorageType.VOD), ValueError),
    ("duration", None, TypeError),
    ("duration", "20", TypeError),
    ("duration", True, TypeError),
    ("duration", 20.0, TypeError),
    ("duration", 0, ValueError),
    ("duration", 601, ValueError),
    ("max_idle_time", -1, ValueError),
    ("max_idle_time", 86401, ValueError),
    ("max_idle_time", "180", TypeError),
    ("handle", "yes", TypeError),
    ("handle", 1, TypeError),
    ("handle", None, TypeError),
    ("identifier", "has space", ValueError),
    ("identifier", "x" * 129, ValueError),
    ("identifier", 5, TypeError),
    ("identifier", "", ValueError),
    ("business_id", "\n", ValueError),
    ("business_id", 5, TypeError),
    ("control", "mixed", TypeError),
    ("target_streams", "user1", TypeError),
    ("target_streams", [("user1", 0)], TypeError),
    ("target_streams", [Stream(user_id=f"u{i}", index=i) for i in range(18)], ValueError),
    ("target_streams", [Stream(user_id="u", index=1), Stream(user_id="v", index=1)], ValueError),
    ("target_streams", [Stream(user_id="bad user", index=0)], ValueError),
]


@pytest.mark.parametrize(("name", "value", "error"), START_BAD, ids=repr)
async def test_start_segment_arguments(
    emulator: Emulator, name: str, value: object, error: type[Exception]
) -> None:
    arguments: dict[str, Any] = {"storage_config": STORAGE, name: value}
    shown = "target_streams" if name == "target_streams" else name
    if name == "storage_config" and isinstance(value, StorageConfig):
        shown = "storage_config"
    await assert_rejected(emulator, lambda c: c.start_segment(**GOOD, **arguments), error, shown)


@pytest.mark.parametrize(
    ("arguments", "error", "name"),
    [
        ({}, ValueError, "identifier"),  # nothing to change
        ({"duration": 0}, ValueError, "duration"),
        ({"duration": "5"}, TypeError, "duration"),
        ({"handle": "false"}, TypeError, "handle"),
        ({"identifier": "a b"}, ValueError, "identifier"),
        ({"duration": 5, "business_id": "é"}, ValueError, "business_id"),
    ],
    ids=repr,
)
async def test_update_and_stop_arguments(
    emulator: Emulator, arguments: dict[str, Any], error: type[Exception], name: str
) -> None:
    await assert_rejected(emulator, lambda c: c.update_segment(**GOOD, **arguments), error, name)
    if "business_id" in arguments:
        await assert_rejected(
            emulator,
            lambda c: c.stop_segment(**GOOD, business_id=arguments["business_id"]),
            error,
            name,
        )


# -- constructors ------------------------------------------------------------------------

CLIENT_BAD: list[tuple[str, Any, type[Exception]]] = [
    ("credentials", "AKLT:secret", TypeError),
    ("credentials", ("AKLT", "secret"), TypeError),
    ("endpoint", None, TypeError),
    ("endpoint", 5, TypeError),
    ("endpoint", "", ValueError),
    ("endpoint", " ", ValueError),
    ("endpoint", "rtc.volcengineapi.com", ValueError),
    ("endpoint", "ftp://rtc.volcengineapi.com", ValueError),
    ("endpoint", "https://", ValueError),
    ("endpoint", "https://rtc.volcengineapi.com/path", ValueError),
    ("endpoint", "https://user:pw@rtc.volcengineapi.com", ValueError),
    ("endpoint", "https://rtc.volcengineapi.com?Action=x", ValueError),
    ("endpoint", "https://rtc.volcengineapi.com\r\nX-Evil: 1", ValueError),
    ("endpoint", "http://rtc.volcengineapi.com", ValueError),
    ("region", None, ValueError),
    ("region", "", ValueError),
    ("region", " ", ValueError),
    ("region", "cn-north-1\n", ValueError),
    ("region", "cn north", ValueError),
    ("region", 5, ValueError),
    ("qps", None, TypeError),
    ("qps", "60", TypeError),
    ("qps", True, TypeError),
    ("qps", 0, ValueError),
    ("qps", -1, ValueError),
    ("qps", float("nan"), ValueError),
    ("qps", float("inf"), ValueError),
    ("limiter", object(), TypeError),
    ("limiter", 60, TypeError),
    ("action_limiters", {"Nope": LocalRateLimiter(1)}, ValueError),
    ("action_limiters", {"StartSegment": 60}, TypeError),
    ("timeout", None, ValueError),
    ("timeout", "10", ValueError),
    ("timeout", 0, ValueError),
    ("timeout", -1, ValueError),
    ("timeout", float("nan"), ValueError),
    ("timeout", True, ValueError),
    ("max_retries", -1, ValueError),
    ("max_retries", 1.5, ValueError),
    ("max_retries", None, ValueError),
    ("max_retries", True, ValueError),
    ("max_connections", 0, ValueError),
    ("max_connections", None, TypeError),
    ("max_connections", 2.0, TypeError),
    ("http_backend", "curl", ValueError),
    ("http_backend", None, ValueError),
    ("backoff", 5, TypeError),
    ("backoff", "exponential", TypeError),
    ("clock", "now", TypeError),
    ("clock", 5, TypeError),
]


@pytest.mark.parametrize(("name", "value", "error"), CLIENT_BAD, ids=repr)
def test_client_arguments(name: str, value: object, error: type[Exception]) -> None:
    arguments: dict[str, Any] = {"credentials": DEFAULT_CREDENTIALS, name: value}
    with pytest.raises(error) as caught:
        SegmentClient(**arguments)
    assert name in str(caught.value)


CREDENTIALS_BAD: list[tuple[str, Any, type[Exception]]] = [
    ("access_key_id", None, TypeError),
    ("access_key_id", 5, TypeError),
    ("access_key_id", b"AK", TypeError),
    ("access_key_id", "", ValueError),
    ("access_key_id", " ", ValueError),
    ("access_key_id", "AKLT \n", ValueError),
    ("access_key_id", "AKLT\r\nX-Evil: 1", ValueError),
    ("access_key_id", "AK\x00", ValueError),
    ("secret_access_key", None, TypeError),
    ("secret_access_key", "", ValueError),
    ("secret_access_key", "  ", ValueError),
    ("secret_access_key", "s3cr3t\n", ValueError),
    ("session_token", 5, TypeError),
    ("session_token", "token\r\nX-Evil: 1", ValueError),
    ("session_token", " ", ValueError),
]


@pytest.mark.parametrize(("name", "value", "error"), CREDENTIALS_BAD, ids=repr)
def test_credentials_arguments(name: str, value: object, error: type[Exception]) -> None:
    arguments: dict[str, Any] = {"access_key_id": "AKLTid", "secret_access_key": "secret"}
    arguments[name] = value
    with pytest.raises(error) as caught:
        Credentials(**arguments)
    assert name in str(caught.value)
    if name != "access_key_id" and isinstance(value, str) and value.strip():
        assert value.strip() not in str(caught.value)  # a secret is never echoed


LIMITER_BAD: list[tuple[str, Any, type[Exception]]] = [
    ("qps", None, TypeError),
    ("qps", "60", TypeError),
    ("qps", True, TypeError),
    ("qps", 0, ValueError),
    ("qps", -0.5, ValueError),
    ("qps", float("nan"), ValueError),
    ("qps", float("inf"), ValueError),
    ("utilization", "0.9", TypeError),
    ("utilization", 0, ValueError),
    ("utilization", 1, ValueError),
    ("utilization", 1.5, ValueError),
    ("utilization", float("nan"), ValueError),
]


@pytest.mark.parametrize(("name", "value", "error"), LIMITER_BAD, ids=repr)
def test_limiter_arguments(name: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        LocalRateLimiter(**{name: value})
    assert name in str(caught.value)


def test_backoff_disabled_is_still_accepted() -> None:
    # The validation above must not refuse the documented test switch.
    SegmentClient(DEFAULT_CREDENTIALS, backoff=Backoff.disabled())
