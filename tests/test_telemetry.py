"""Tests for rtc_segment._telemetry: telemetry on by default. With OpenTelemetry's global
providers set and no other line, calls are traced and measured; the switch turns that off;
a set OpenTelemetryHook takes the default's place (one span per call, never two).

OpenTelemetry's global providers can be set once per process: the ``global_providers``
fixture resets them (as opentelemetry-test-utils does) and makes the default hook anew,
before and after each test, so no other test sees them.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from rtc_segment import (
    Backoff,
    CallDetails,
    CallRecorder,
    OpenTelemetryHook,
    SegmentClient,
    TaskKey,
    set_call_hooks,
    set_default_telemetry,
)
from rtc_segment._instrumentation import active_call_hooks
from rtc_segment._telemetry import forget_default_hook
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

KEY = TaskKey("app", "room", "task")


def reset_opentelemetry_globals() -> None:
    """No global provider, as in a new process (what opentelemetry-test-utils' reset_*
    functions do), and a default hook made anew: a proxy tracer keeps what it found."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    metrics_internal._METER_PROVIDER_SET_ONCE = Once()
    metrics_internal._METER_PROVIDER = None
    metrics_internal._PROXY_METER_PROVIDER = metrics_internal._ProxyMeterProvider()
    forget_default_hook()
    set_call_hooks(None)
    set_default_telemetry(None)


class GlobalProviders:
    """SDK providers keeping everything in memory, set as the global ones by :meth:`set`."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def set(self) -> None:
        """What an application does at start-up, and nothing else."""
        trace.set_tracer_provider(self.tracer_provider)
        metrics.set_meter_provider(self.meter_provider)

    def spans(self) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name.startswith("RTC.")]

    def calls_counted(self) -> int:
        data = self.reader.get_metrics_data()
        return sum(
            point.value
            for resource in (data.resource_metrics if data else [])
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "rtc.client.calls"
            for point in metric.data.data_points
        )


@pytest.fixture
def providers(monkeypatch: pytest.MonkeyPatch) -> Iterator[GlobalProviders]:
    monkeypatch.delenv("RTC_SEGMENT_TELEMETRY", raising=False)
    reset_opentelemetry_globals()
    providers = GlobalProviders()
    try:
        yield providers
    finally:
        providers.tracer_provider.shutdown()
        providers.meter_provider.shutdown()
        reset_opentelemetry_globals()


def client_on(emulator: Emulator, **kwargs: Any) -> SegmentClient:
    return SegmentClient(
        DEFAULT_CREDENTIALS,
        transport=emulator.transport(),
        clock=emulator.wall_clock,
        backoff=Backoff.disabled(),
        **kwargs,
    )


def emulator_with_task() -> Emulator:
    emulator = Emulator()
    emulator.add_task(*KEY)
    return emulator


# -- on by default --------------------------------------------------------------------------


@pytest.mark.looptime
async def test_with_global_providers_and_no_other_line_a_call_is_traced_and_counted(
    providers: GlobalProviders,
) -> None:
    providers.set()
    async with client_on(emulator_with_task()) as client:
        await client.get_segment_task(*KEY)
    (span,) = providers.spans()
    assert span.name == "RTC.GetSegmentTask"
    assert span.kind is trace.SpanKind.CLIENT
    assert span.attributes is not None
    assert span.attributes["rtc.task_id"] == "task"
    assert span.attributes["http.response.status_code"] == 200
    assert providers.calls_counted() == 1


@pytest.mark.looptime
async def test_providers_set_after_the_client_and_its_first_call_still_get_what_follows(
    providers: GlobalProviders,
) -> None:
    async with client_on(emulator_with_task()) as client:
        await client.get_segment_task(*KEY)  # no provider yet: OpenTelemetry's no-ops
        providers.set()
        await client.get_segment_task(*KEY)
        outcomes = await client.gather_segment_tasks([KEY, KEY])
    assert all(outcome.ok for outcome in outcomes)
    assert [s.name for s in providers.spans()] == [
        "RTC.GetSegmentTask",
        "RTC.GetSegmentTask fan-out",
    ]
    assert providers.calls_counted() == 3  # the call and the fan-out's two, not the first


@pytest.mark.looptime
async def test_a_fan_out_is_one_span_by_default(providers: GlobalProviders) -> None:
    providers.set()
    async with client_on(emulator_with_task()) as client:
        await client.gather_segment_tasks([KEY] * 5)
    (span,) = providers.spans()
    assert span.name == "RTC.GetSegmentTask fan-out"
    assert span.attributes is not None
    assert span.attributes["rtc.run.calls"] == 5


# -- the switch -------------------------------------------------------------------------------


@pytest.mark.looptime
@pytest.mark.parametrize("word", ["off", "OFF", "false", "0", "no"])
async def test_the_environment_variable_turns_it_off(
    providers: GlobalProviders, monkeypatch: pytest.MonkeyPatch, word: str
) -> None:
    monkeypatch.setenv("RTC_SEGMENT_TELEMETRY", word)
    providers.set()
    async with client_on(emulator_with_task()) as client:
        await client.get_segment_task(*KEY)
        await client.gather_segment_tasks([KEY])
    assert providers.spans() == []
    assert providers.calls_counted() == 0
    assert active_call_hooks() == ()


@pytest.mark.looptime
async def test_set_default_telemetry_turns_it_off_and_on_again(
    providers: GlobalProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    providers.set()
    async with client_on(emulator_with_task()) as client:
        set_default_telemetry(False)
        await client.get_segment_task(*KEY)
        assert providers.spans() == []
        set_default_telemetry(True)
        monkeypatch.setenv("RTC_SEGMENT_TELEMETRY", "off")  # the function's choice wins
        await client.get_segment_task(*KEY)
        assert len(providers.spans()) == 1
        set_default_telemetry(None)  # back to the environment's choice: off
        await client.get_segment_task(*KEY)
    assert len(providers.spans()) == 1
    assert providers.calls_counted() == 1


@pytest.mark.looptime
async def test_a_bad_environment_value_is_refused_by_name_before_anything_is_sent(
    providers: GlobalProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTC_SEGMENT_TELEMETRY", "of")
    emulator = emulator_with_task()
    async with client_on(emulator) as client:
        with pytest.raises(ValueError, match=r"RTC_SEGMENT_TELEMETRY='of'.*'off'"):
            await client.get_segment_task(*KEY)
    assert emulator.requests == []


def test_set_default_telemetry_takes_a_bool_or_none() -> None:
    with pytest.raises(TypeError, match="enabled"):
        set_default_telemetry("off")  # type: ignore[arg-type]


# -- with hooks set ---------------------------------------------------------------------------


@pytest.mark.looptime
@pytest.mark.parametrize("per_key_spans", [False, True])
async def test_a_set_opentelemetry_hook_takes_the_defaults_place_one_span_per_call(
    providers: GlobalProviders, per_key_spans: bool
) -> None:
    providers.set()
    set_call_hooks([OpenTelemetryHook(per_key_spans=per_key_spans)])
    async with client_on(emulator_with_task()) as client:
        await client.get_segment_task(*KEY)
        await client.gather_segment_tasks([KEY, KEY])
    names = [s.name for s in providers.spans()]
    # Its own options count: with per_key_spans, each call of the fan-out has a span.
    per_key = ["RTC.GetSegmentTask"] * 2 if per_key_spans else []
    assert sorted(names) == sorted(["RTC.GetSegmentTask", *per_key, "RTC.GetSegmentTask fan-out"])
    assert providers.calls_counted() == 3


@pytest.mark.looptime
async def test_other_hooks_keep_the_default_and_see_its_span_current(
    providers: GlobalProviders,
) -> None:
    providers.set()
    current: list[trace.Span] = []

    class SeeingCurrent(CallRecorder):
        def on_call(self, call: CallDetails) -> Any:
            current.append(trace.get_current_span())
            return super().on_call(call)

    set_call_hooks([SeeingCurrent()])
    async with client_on(emulator_with_task()) as client:
        await client.get_segment_task(*KEY)
    (span,) = providers.spans()
    (seen,) = current
    assert seen.get_span_context().span_id == span.context.span_id


def test_without_opentelemetry_api_calls_work_and_no_hook_is_in_effect() -> None:
    code = (
        "import asyncio, sys\n"
        "sys.modules['opentelemetry'] = None  # as if opentelemetry-api were not installed\n"
        "import rtc_segment\n"
        "from rtc_segment._instrumentation import active_call_hooks\n"
        "from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator\n"
        "async def main():\n"
        "    emulator = Emulator(); emulator.add_task('a', 'r', 't')\n"
        "    async with rtc_segment.SegmentClient(\n"
        "            DEFAULT_CREDENTIALS, transport=emulator.transport()) as client:\n"
        "        task = await client.get_segment_task('a', 'r', 't')\n"
        "    print(task.status.name, active_call_hooks())\n"
        "asyncio.run(main())\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "RUNNING ()"
    assert "raised" not in result.stderr  # nothing logged: a missing extra is no fault
