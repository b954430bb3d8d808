"""Tests for rtc_segment._instrumentation: the hook registry and what the HTTP path and the
schedulers tell hooks, against the emulator (in virtual time where timing matters)."""

from __future__ import annotations

import ast
import asyncio
import contextvars
import os
import subprocess
import sys
from typing import Any

import pytest

import rtc_segment._instrumentation
from rtc_segment import (
    Backoff,
    CallDetails,
    CallHook,
    CallRecorder,
    CallResult,
    DeadlineExceededError,
    RetryDetails,
    RunDetails,
    SegmentClient,
    ServerError,
    TaskKey,
    TaskNotFoundError,
    TaskWatch,
    ThrottledError,
    get_call_hooks,
    set_call_hooks,
)
from rtc_segment._instrumentation import active_call_hooks
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault, Lifecycle

KEY = TaskKey("app", "room", "task")
MISSING = TaskKey("app", "room", "nope")


def emulator_with_task(**kwargs: Any) -> Emulator:
    emulator = Emulator(**kwargs)
    emulator.add_task(*KEY)
    return emulator


def client_on(emulator: Emulator, **kwargs: Any) -> SegmentClient:
    kwargs.setdefault("credentials", DEFAULT_CREDENTIALS)
    kwargs.setdefault("clock", emulator.wall_clock)
    kwargs.setdefault("backoff", Backoff.disabled())
    return SegmentClient(transport=emulator.transport(), **kwargs)


# -- the registry -------------------------------------------------------------------------


def test_no_hooks_by_default_and_none_resets() -> None:
    assert get_call_hooks() == ()
    recorder = CallRecorder()
    set_call_hooks([recorder])
    assert get_call_hooks() == (recorder,)
    set_call_hooks(None)
    assert get_call_hooks() == ()
    set_call_hooks(iter([recorder]))  # any iterable, kept as a tuple
    assert get_call_hooks() == (recorder,)
    set_call_hooks([])
    assert get_call_hooks() == ()


@pytest.mark.parametrize("bad", [CallRecorder(), "hooks", 3, [object()], [CallRecorder, 1]])
def test_set_call_hooks_refuses_what_is_not_hooks(bad: object) -> None:
    recorder = CallRecorder()
    set_call_hooks([recorder])
    with pytest.raises(TypeError, match="hooks"):
        set_call_hooks(bad)  # type: ignore[arg-type]
    assert get_call_hooks() == (recorder,)  # unchanged


def test_the_recorder_is_a_hook_and_a_context_manager() -> None:
    first = CallRecorder()
    assert isinstance(first, CallHook)
    set_call_hooks([first])
    with CallRecorder() as second:
        assert get_call_hooks() == (first, second)
    assert get_call_hooks() == (first,)


IMPORT_AND_CALL = (
    "import asyncio, sys\n"
    "import rtc_segment\n"
    "from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator\n"
    "async def main():\n"
    "    emulator = Emulator(); emulator.add_task('a', 'r', 't')\n"
    "    with rtc_segment.CallRecorder():\n"
    "        async with rtc_segment.SegmentClient(\n"
    "            DEFAULT_CREDENTIALS, transport=emulator.transport()) as client:\n"
    "            await client.get_segment_task('a', 'r', 't')\n"
    "            await client.gather_segment_tasks([('a', 'r', 't')])\n"
    "if sys.argv[1] == 'call':\n"
    "    asyncio.run(main())\n"
    "loaded = sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'rtc_segment._otel')))\n"
    "print(loaded)\n"
)


def loaded_by(what: str, telemetry: str | None) -> list[str]:
    """The OpenTelemetry modules loaded in a new interpreter by importing rtc_segment
    (``what="import"``) or by calls too (``"call"``), with RTC_SEGMENT_TELEMETRY set so."""
    env = {k: v for k, v in os.environ.items() if k != "RTC_SEGMENT_TELEMETRY"}
    if telemetry is not None:
        env["RTC_SEGMENT_TELEMETRY"] = telemetry
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_AND_CALL, what],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    loaded: list[str] = ast.literal_eval(result.stdout.strip())
    return loaded


def test_importing_never_loads_opentelemetry() -> None:
    assert loaded_by("import", telemetry=None) == []


def test_with_the_default_telemetry_off_calling_never_loads_opentelemetry() -> None:
    assert loaded_by("call", telemetry="off") == []


def test_by_default_the_first_call_loads_the_opentelemetry_hook() -> None:
    loaded = loaded_by("call", telemetry=None)
    assert "rtc_segment._otel" in loaded
    assert "opentelemetry.trace" in loaded


# -- one call ---------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_a_successful_call_is_reported_start_to_end() -> None:
    emulator = emulator_with_task(latency=0.25)
    async with client_on(emulator) as client:
        with CallRecorder() as recorded:
            await client.get_segment_task(*KEY)
    assert recorded.started == [
        CallDetails("GetSegmentTask", KEY, False, "rtc.volcengineapi.com", 443)
    ]
    (result,) = recorded.calls
    (record,) = emulator.requests
    assert result.ok and result.error is None
    assert result.call is recorded.started[0]
    assert (result.attempts, result.throttled, result.http_status) == (1, 0, 200)
    assert result.request_id == record.request_id
    assert result.duration == pytest.approx(0.25, abs=0.01)
    assert recorded.retries == [] and recorded.runs == []
    assert len(recorded.limiter_waits) == 1


@pytest.mark.looptime
async def test_retries_throttling_and_the_last_answer_are_reported() -> None:
    emulator = emulator_with_task()
    emulator.faults.next(1, Fault.HTTP_429)  # Retry-After: 1
    emulator.faults.next(1, Fault.HTTP_503)
    async with client_on(emulator, backoff=Backoff(initial=0.5, maximum=0.5)) as client:
        with CallRecorder() as recorded:
            await client.get_segment_task(*KEY)
    first, second = recorded.retries
    assert isinstance(first, RetryDetails)
    assert (first.attempt, type(first.error), first.backoff) == (1, ThrottledError, 1.0)
    assert second.attempt == 2 and isinstance(second.error, ServerError)
    assert 0.0 <= second.backoff <= 0.5
    (result,) = recorded.calls
    assert result.ok and (result.attempts, result.throttled, result.http_status) == (3, 1, 200)
    assert result.request_id == emulator.requests[-1].request_id
    assert len(recorded.limiter_waits) == 3
    assert result.duration >= 1.0 + second.backoff


@pytest.mark.looptime
async def test_a_failed_call_reports_its_error_and_the_answer() -> None:
    emulator = emulator_with_task()
    async with client_on(emulator) as client:
        with CallRecorder() as recorded, pytest.raises(TaskNotFoundError) as caught:
            await client.get_segment_task(*MISSING)
    (result,) = recorded.calls
    assert result.error is caught.value and not result.ok
    assert (result.attempts, result.http_status) == (1, 400)
    assert result.request_id == caught.value.request_id == emulator.requests[0].request_id


@pytest.mark.looptime
async def test_throttled_to_the_end_counts_every_throttled_answer() -> None:
    emulator = emulator_with_task()
    emulator.faults.next(3, Fault.HTTP_429)
    async with client_on(emulator, max_retries=2, backoff=Backoff.disabled()) as client:
        with CallRecorder() as recorded, pytest.raises(ThrottledError):
            await client.get_segment_task(*KEY)
    (result,) = recorded.calls
    assert (result.attempts, result.throttled, len(recorded.retries)) == (3, 3, 2)


@pytest.mark.looptime
async def test_a_call_cancelled_at_the_limiter_ends_once_with_the_cancellation() -> None:
    emulator = emulator_with_task()
    async with client_on(emulator, qps=1.0) as client:
        await client.get_segment_task(*KEY)  # the next one waits about a second
        with CallRecorder() as recorded:
            waiting = asyncio.create_task(client.get_segment_task(*KEY))
            await asyncio.sleep(0.1)
            assert client.stats.waiting_for_limiter == 1
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        assert client.stats.waiting_for_limiter == 0
    (result,) = recorded.calls
    assert isinstance(result.error, asyncio.CancelledError)
    assert result.attempts == 0 and recorded.limiter_waits == []
    assert emulator.count() == 1


@pytest.mark.looptime
async def test_limiter_waits_are_reported_per_attempt() -> None:
    emulator = emulator_with_task()
    async with client_on(emulator, qps=2.0) as client:
        with CallRecorder() as recorded:
            await asyncio.gather(*(client.get_segment_task(*KEY) for _ in range(3)))
    # All three asked at once; each waited until the limiter let it go, when it arrived.
    arrivals = sorted(record.arrival for record in emulator.requests)
    expected = [pytest.approx(at - arrivals[0], abs=1e-3) for at in arrivals]
    waits = sorted(recorded.limiter_waits)
    assert waits == expected
    assert waits[0] == pytest.approx(0.0, abs=1e-3) and waits[2] - waits[1] >= 0.5 - 1e-3
    assert sorted(r.limiter_wait for r in recorded.calls) == waits


# -- hooks that misbehave, and in which order observers hear of the end -----------------------


class Exploding:
    """A hook whose every method raises."""

    def on_call(self, call: CallDetails) -> Any:
        return self

    def on_run(self, run: RunDetails) -> Any:
        raise RuntimeError("on_run broke")

    def on_limiter_wait(self, seconds: float) -> None:
        raise RuntimeError("on_limiter_wait broke")

    def on_retry(self, retry: RetryDetails) -> None:
        raise RuntimeError("on_retry broke")

    def on_end(self, result: CallResult) -> None:
        raise RuntimeError("on_end broke")


@pytest.mark.looptime
async def test_a_hook_that_raises_is_logged_and_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    emulator = emulator_with_task()
    emulator.faults.next(1, Fault.HTTP_503)
    recorder = CallRecorder()
    set_call_hooks([Exploding(), recorder])
    async with client_on(emulator) as client:
        task = await client.get_segment_task(*KEY)
        outcomes = await client.gather_segment_tasks([KEY])
    assert task.status.name == "RUNNING" and outcomes[0].ok
    assert len(recorder.calls) == 2 and len(recorder.retries) == 1
    broken = {str(r.exc_info[1]) for r in caplog.records if r.exc_info}
    assert broken == {"on_run broke", "on_limiter_wait broke", "on_retry broke", "on_end broke"}


@pytest.mark.looptime
async def test_a_default_hook_source_that_raises_is_logged_and_calls_go_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_source(set_hooks: tuple[CallHook, ...]) -> CallHook | None:
        raise RuntimeError("the OpenTelemetry install is broken")

    monkeypatch.setattr(rtc_segment._instrumentation, "_default_source", broken_source)
    monkeypatch.delenv("RTC_SEGMENT_TELEMETRY", raising=False)
    recorder = CallRecorder()
    set_call_hooks([recorder])
    async with client_on(emulator_with_task()) as client:
        task = await client.get_segment_task(*KEY)
    assert task.status.name == "RUNNING"
    assert len(recorder.calls) == 1  # the hooks set are still told
    assert active_call_hooks() == (recorder,)
    broken = {str(r.exc_info[1]) for r in caplog.records if r.exc_info}
    assert broken == {"the OpenTelemetry install is broken"}


class Ordered:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def on_call(self, call: CallDetails) -> Ordered:
        self.log.append(f"{self.name} start")
        return self

    def on_run(self, run: RunDetails) -> None:
        return None

    def on_limiter_wait(self, seconds: float) -> None:
        pass

    def on_retry(self, retry: RetryDetails) -> None:
        pass

    def on_end(self, result: CallResult) -> None:
        self.log.append(f"{self.name} end")


@pytest.mark.looptime
async def test_observers_end_in_reverse_order_of_their_start() -> None:
    # So that what one made current for the call is undone after what the next made.
    log: list[str] = []
    set_call_hooks([Ordered("a", log), Ordered("b", log)])
    emulator = emulator_with_task()
    async with client_on(emulator) as client:
        await client.get_segment_task(*KEY)
    assert log == ["a start", "b start", "b end", "a end"]


# -- runs: fan-out and watching ---------------------------------------------------------------

RUN_LABEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("run_label", default=None)


class Labelling:
    """Sets a context variable in on_run; records what each call sees of it."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, str | None]] = []
        self.runs = 0

    def on_call(self, call: CallDetails) -> None:
        self.seen.append((call.bulk, RUN_LABEL.get()))

    def on_run(self, run: RunDetails) -> None:
        self.runs += 1
        RUN_LABEL.set(f"{run.kind} {self.runs}")


@pytest.mark.looptime
async def test_a_fan_out_is_one_run_whose_calls_are_bulk_and_see_its_context() -> None:
    emulator = emulator_with_task()
    labelling = Labelling()
    set_call_hooks([labelling])
    async with client_on(emulator) as client:
        with CallRecorder() as recorded:
            outcomes = await client.gather_segment_tasks([KEY, MISSING, KEY])
            await client.get_segment_task(*KEY)  # outside the run: not bulk, no label
    assert [o.ok for o in outcomes] == [True, False, True]
    assert recorded.runs == recorded.ended_runs == [RunDetails("fan-out", "GetSegmentTask")]
    assert labelling.seen == [(True, "fan-out 1")] * 3 + [(False, None)]
    assert RUN_LABEL.get() is None  # the run's context never leaked into the caller's
    assert [r.call.bulk for r in recorded.calls] == [True, True, True, False]


@pytest.mark.looptime
async def test_a_fan_out_left_early_ends_its_run() -> None:
    emulator = emulator_with_task()
    async with client_on(emulator, qps=5.0) as client:
        with CallRecorder() as recorded:
            async with client.get_segment_tasks([KEY] * 20, concurrency=4) as outcomes:
                async for _ in outcomes:
                    break
            assert recorded.ended_runs == [RunDetails("fan-out", "GetSegmentTask")]
    # The calls still in flight ended, cancelled, and were reported.
    assert len(recorded.calls) == len(recorded.started)
    assert any(isinstance(r.error, asyncio.CancelledError) for r in recorded.calls)


@pytest.mark.looptime
async def test_watching_many_tasks_is_one_run() -> None:
    emulator = Emulator()
    keys = [TaskKey("app", f"room{n}", "task") for n in range(3)]
    for n, key in enumerate(keys, start=1):
        emulator.add_task(*key, lifecycle=Lifecycle.after_seconds(ended=5 * n))
    async with client_on(emulator) as client:
        with CallRecorder() as recorded:
            async with TaskWatch(client, keys, poll_interval=2.0) as watch:
                finals = [event async for event in watch if event.final]
    assert len(finals) == 3
    assert recorded.runs == recorded.ended_runs == [RunDetails("watch", "GetSegmentTask")]
    assert len(recorded.calls) >= 6 and all(r.call.bulk for r in recorded.calls)


@pytest.mark.looptime
async def test_waiting_for_one_task_is_one_run_whose_polls_see_its_context() -> None:
    emulator = Emulator()
    emulator.add_task(*KEY, lifecycle=Lifecycle.after_seconds(ended=10))
    labelling = Labelling()
    set_call_hooks([labelling])
    async with client_on(emulator) as client:
        with CallRecorder() as recorded:
            task = await client.wait_for_segment_task(*KEY, poll_interval=3.0)
            watched = [t async for t in client.watch_segment_task(*KEY, poll_interval=3.0)]
    assert task.is_terminal and watched == [task]
    assert recorded.runs == recorded.ended_runs == [RunDetails("watch", "GetSegmentTask")] * 2
    assert labelling.seen[:4] == [(True, "watch 1")] * 4  # polls at 0, 3, 6, 9 ... s
    assert labelling.seen[-1] == (True, "watch 2")
    assert RUN_LABEL.get() is None


@pytest.mark.looptime
async def test_a_deadline_after_a_throttled_answer_still_counts_it() -> None:
    # The deadline cannot cover the Retry-After: the call gives up without retrying, and
    # the throttled answer that made it give up is reported with it.
    emulator = emulator_with_task()
    emulator.faults.retry_after = 5
    emulator.faults.next(1, Fault.HTTP_429)
    async with client_on(emulator, backoff=Backoff()) as client:
        with CallRecorder() as recorded, pytest.raises(DeadlineExceededError):
            await client.get_segment_task(*KEY, deadline=2.0)
    (result,) = recorded.calls
    assert recorded.retries == []
    assert (result.attempts, result.throttled, result.http_status) == (1, 1, 429)
    assert result.request_id == emulator.requests[0].request_id
