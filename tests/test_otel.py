"""Tests for rtc_segment._otel: OpenTelemetryHook's spans and metrics, read back with the
OpenTelemetry SDK's in-memory span exporter and metric reader, against the emulator."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from rtc_segment import (
    Backoff,
    OpenTelemetryHook,
    SegmentClient,
    TaskKey,
    TaskNotFoundError,
    TaskWatch,
    set_call_hooks,
)
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault, Lifecycle

KEY = TaskKey("app", "room", "task")
MISSING = TaskKey("app", "room", "nope")
RPC = {"rpc.system": "volcengine_openapi", "rpc.service": "rtc", "rpc.method": "GetSegmentTask"}


class Telemetry:
    """An SDK tracer and meter provider that keep everything in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("the application")

    def install(self, **options: Any) -> OpenTelemetryHook:
        hook = OpenTelemetryHook(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **options
        )
        set_call_hooks([hook])
        return hook

    def spans(self, name_prefix: str = "RTC.") -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name.startswith(name_prefix)]

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of the metric ``name``."""
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found

    def all_metric_attributes(self) -> list[dict[str, Any]]:
        data = self.reader.get_metrics_data()
        return [
            dict(point.attributes or {})
            for resource in (data.resource_metrics if data else [])
            for scope in resource.scope_metrics
            for metric in scope.metrics
            for point in metric.data.data_points
        ]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    telemetry = Telemetry()
    yield telemetry
    telemetry.tracer_provider.shutdown()
    telemetry.meter_provider.shutdown()


def emulator_with_task(**kwargs: Any) -> Emulator:
    emulator = Emulator(**kwargs)
    emulator.add_task(*KEY)
    return emulator


def client_on(emulator: Emulator, **kwargs: Any) -> SegmentClient:
    kwargs.setdefault("credentials", DEFAULT_CREDENTIALS)
    kwargs.setdefault("clock", emulator.wall_clock)
    kwargs.setdefault("backoff", Backoff.disabled())
    kwargs.setdefault("transport", emulator.transport())
    return SegmentClient(**kwargs)


class SpanSeeing(httpx.AsyncBaseTransport):
    """Wraps a transport; records the span current when each request is sent."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.current: list[trace.SpanContext] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.current.append(trace.get_current_span().get_span_context())
        return await self.inner.handle_async_request(request)


# -- spans of single calls --------------------------------------------------------------------


@pytest.mark.looptime
async def test_a_call_is_one_client_span_named_after_its_action(telemetry: Telemetry) -> None:
    telemetry.install()
    emulator = emulator_with_task()
    async with client_on(emulator) as client:
        await client.get_segment_task(*KEY)
    (span,) = telemetry.spans()
    assert (span.name, span.kind, span.status.status_code) == (
        "RTC.GetSegmentTask",
        SpanKind.CLIENT,
        StatusCode.UNSET,
    )
    attributes = dict(span.attributes or {})
    assert attributes.pop("rtc.limiter.wait_seconds") == pytest.approx(0.0, abs=0.05)
    assert attributes == {
        **RPC,
        "server.address": "rtc.volcengineapi.com",
        "server.port": 443,
        "rtc.app_id": "app",
        "rtc.room_id": "room",
        "rtc.task_id": "task",
        "http.response.status_code": 200,
        "volcengine.request_id": emulator.requests[0].request_id,
        "rtc.attempts": 1,
        "rtc.throttled": False,
    }
    assert span.parent is None and span.events == ()


@pytest.mark.looptime
async def test_each_retry_is_an_event_with_why_and_the_backoff(telemetry: Telemetry) -> None:
    telemetry.install()
    emulator = emulator_with_task()
    emulator.faults.next(1, Fault.HTTP_429)  # Retry-After: 1
    async with client_on(emulator, backoff=Backoff()) as client:
        await client.get_segment_task(*KEY)
    (span,) = telemetry.spans()
    (event,) = span.events
    assert event.name == "retry"
    reason = dict(event.attributes or {}).pop("rtc.retry.reason")
    assert str(reason).startswith("FlowLimitExceeded")  # the service's code and message
    assert {k: v for k, v in (event.attributes or {}).items() if k != "rtc.retry.reason"} == {
        "rtc.attempt": 1,
        "error.type": "ThrottledError",
        "rtc.retry.backoff_seconds": 1.0,
        "http.response.status_code": 429,
    }
    attributes = span.attributes or {}
    assert attributes["rtc.attempts"] == 2 and attributes["rtc.throttled"] is True
    assert attributes["volcengine.request_id"] == emulator.requests[-1].request_id
    assert attributes["http.response.status_code"] == 200


@pytest.mark.looptime
async def test_a_failed_call_has_status_error_and_its_error_class(telemetry: Telemetry) -> None:
    telemetry.install()
    emulator = emulator_with_task()
    async with client_on(emulator) as client:
        with pytest.raises(TaskNotFoundError) as caught:
            await client.get_segment_task(*MISSING)
    (span,) = telemetry.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == str(caught.value)
    attributes = span.attributes or {}
    assert attributes["error.type"] == "TaskNotFoundError"
    assert attributes["http.response.status_code"] == 400
    assert attributes["volcengine.request_id"] == caught.value.request_id


@pytest.mark.looptime
async def test_the_limiter_wait_is_on_the_span(telemetry: Telemetry) -> None:
    telemetry.install()
    emulator = emulator_with_task()
    async with client_on(emulator, qps=1.0) as client:
        await client.get_segment_task(*KEY)
        await client.get_segment_task(*KEY)  # about a second behind the first
    first, second = telemetry.spans()
    gap = emulator.requests[1].arrival - emulator.requests[0].arrival
    assert gap >= 0.99
    assert (first.attributes or {})["rtc.limiter.wait_seconds"] == pytest.approx(0.0, abs=1e-3)
    assert (second.attributes or {})["rtc.limiter.wait_seconds"] == pytest.approx(gap, abs=1e-3)


@pytest.mark.looptime
async def test_the_span_is_current_while_the_call_runs_and_nests_under_the_callers(
    telemetry: Telemetry,
) -> None:
    telemetry.install()
    emulator = emulator_with_task()
    seeing = SpanSeeing(emulator.transport())
    async with client_on(emulator, transport=seeing) as client:
        with telemetry.tracer.start_as_current_span("handle request") as outer:
            await client.get_segment_task(*KEY)
            assert trace.get_current_span() is outer  # the call's span is no longer current
    (span,) = telemetry.spans()
    assert seeing.current == [span.context]  # what an instrumented httpx would nest under
    assert span.parent is not None and span.parent.span_id == outer.get_span_context().span_id


async def test_over_real_sockets_the_sheltered_exchange_sees_the_span_too(
    telemetry: Telemetry,
) -> None:
    # On httpx's own transport the exchange runs in a task of its own (see Caller): the
    # span must be current there as well.
    class SeeingHttpTransport(httpx.AsyncHTTPTransport):
        def __init__(self) -> None:
            super().__init__()
            self.current: list[trace.SpanContext] = []

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.current.append(trace.get_current_span().get_span_context())
            return await super().handle_async_request(request)

    telemetry.install()
    emulator = emulator_with_task()
    transport = SeeingHttpTransport()
    async with (
        emulator.serve() as url,
        SegmentClient(DEFAULT_CREDENTIALS, endpoint=url, transport=transport) as client,
    ):
        await client.get_segment_task(*KEY)
    (span,) = telemetry.spans()
    assert transport.current == [span.context]
    assert (span.attributes or {})["server.address"] == "127.0.0.1"
    assert (span.attributes or {})["server.port"] == httpx.URL(url).port


@pytest.mark.looptime
async def test_a_cancelled_call_ends_its_span_and_is_no_longer_current(
    telemetry: Telemetry,
) -> None:
    telemetry.install()
    emulator = emulator_with_task()
    async with client_on(emulator, qps=1.0) as client:
        await client.get_segment_task(*KEY)
        with telemetry.tracer.start_as_current_span("handler") as outer:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await client.get_segment_task(*KEY)  # waits ~1 s for the limiter
            assert trace.get_current_span() is outer
    _, cancelled = telemetry.spans()
    assert cancelled.status.status_code is StatusCode.ERROR
    assert (cancelled.attributes or {})["error.type"] == "CancelledError"
    assert (cancelled.attributes or {})["rtc.attempts"] == 0


# -- fan-out and watching ---------------------------------------------------------------------


@pytest.mark.looptime
async def test_a_fan_out_is_one_span_with_totals_and_no_span_per_key(
    telemetry: Telemetry,
) -> None:
    telemetry.install()
    emulator = emulator_with_task()
    emulator.faults.next(1, Fault.HTTP_503)
    async with client_on(emulator) as client:
        with telemetry.tracer.start_as_current_span("job") as job:
            outcomes = await client.gather_segment_tasks([KEY, MISSING, KEY])
    assert [o.ok for o in outcomes] == [True, False, True]
    (run,) = telemetry.spans()
    assert (run.name, run.kind) == ("RTC.GetSegmentTask fan-out", SpanKind.INTERNAL)
    assert run.parent is not None and run.parent.span_id == job.get_span_context().span_id
    attributes = dict(run.attributes or {})
    assert attributes.pop("rtc.limiter.wait_seconds") >= 0.0
    assert attributes == {
        **RPC,
        "rtc.run.kind": "fan-out",
        "rtc.run.calls": 3,
        "rtc.run.failed_calls": 1,
        "rtc.run.retries": 1,
        "rtc.run.throttled_answers": 0,
    }
    assert run.status.status_code is StatusCode.UNSET  # failed keys are outcomes, not a failure


@pytest.mark.looptime
async def test_per_key_spans_nest_each_call_under_the_fan_out(telemetry: Telemetry) -> None:
    telemetry.install(per_key_spans=True)
    emulator = emulator_with_task()
    async with client_on(emulator) as client:
        await client.gather_segment_tasks([KEY, MISSING, KEY])
    calls = [s for s in telemetry.spans() if s.kind is SpanKind.CLIENT]
    (run,) = [s for s in telemetry.spans() if s.kind is SpanKind.INTERNAL]
    assert len(calls) == 3
    for span in calls:
        assert span.parent is not None and span.parent.span_id == run.context.span_id
        assert span.context.trace_id == run.context.trace_id
    assert sorted((s.attributes or {})["rtc.task_id"] for s in calls) == ["nope", "task", "task"]


@pytest.mark.looptime
async def test_a_watch_is_one_span_counting_its_polls(telemetry: Telemetry) -> None:
    telemetry.install()
    emulator = Emulator()
    keys = [TaskKey("app", f"room{n}", "task") for n in range(2)]
    for n, key in enumerate(keys, start=1):
        emulator.add_task(*key, lifecycle=Lifecycle.after_seconds(ended=4 * n))
    async with client_on(emulator) as client:
        async with TaskWatch(client, keys, poll_interval=2.0) as watch:
            async for _ in watch:
                pass
        await client.wait_for_segment_task(*keys[0], poll_interval=2.0)
    many, one = telemetry.spans()
    assert many.name == one.name == "RTC.GetSegmentTask watch"
    assert (many.attributes or {})["rtc.run.calls"] + (one.attributes or {})[
        "rtc.run.calls"
    ] == emulator.count()
    assert (one.attributes or {})["rtc.run.calls"] == 1  # the task had ended already


# -- metrics ----------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_metrics_count_calls_retries_throttling_durations_and_waits(
    telemetry: Telemetry,
) -> None:
    telemetry.install()
    emulator = emulator_with_task()
    emulator.faults.next(1, Fault.HTTP_429)
    async with client_on(emulator) as client:
        await client.get_segment_task(*KEY)  # throttled once, then answered
        with pytest.raises(TaskNotFoundError):
            await client.get_segment_task(*MISSING)
        await client.gather_segment_tasks([KEY, KEY])

    def values(name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        found = {}
        for attributes, point in telemetry.points(name):
            value = getattr(point, "value", None)
            found[tuple(sorted(attributes.items()))] = point.count if value is None else value
        return found

    ok, failed = (
        tuple(sorted(RPC.items())),
        tuple(sorted({**RPC, "error.type": "TaskNotFoundError"}.items())),
    )
    assert values("rtc.client.calls") == {ok: 3, failed: 1}
    assert values("rtc.client.call.duration") == {ok: 3, failed: 1}  # histogram counts
    throttled = tuple(sorted({**RPC, "error.type": "ThrottledError"}.items()))
    assert values("rtc.client.retries") == {throttled: 1}
    assert values("rtc.client.throttled") == {ok: 1}
    single = tuple(sorted({**RPC, "rtc.bulk": False}.items()))
    bulk = tuple(sorted({**RPC, "rtc.bulk": True}.items()))
    assert values("rtc.client.limiter.wait") == {single: 3, bulk: 2}  # one per attempt
    assert values("rtc.client.active_calls") == {ok: 0}
    (_, duration), _ = telemetry.points("rtc.client.call.duration")
    assert duration.explicit_bounds[0] == 0.005  # the advised buckets, in seconds


@pytest.mark.looptime
async def test_metric_attributes_are_few_and_never_an_id(telemetry: Telemetry) -> None:
    telemetry.install(per_key_spans=True)
    emulator = emulator_with_task()
    emulator.faults.next(1, Fault.HTTP_503)
    async with client_on(emulator) as client:
        await client.gather_segment_tasks([KEY, MISSING])
        await client.get_segment_task(*KEY)
    sets = telemetry.all_metric_attributes()
    assert sets
    allowed = {"rpc.system", "rpc.service", "rpc.method", "error.type", "rtc.bulk"}
    ids = {"app", "room", "task", "nope", *(r.request_id for r in emulator.requests)}
    for attributes in sets:
        assert set(attributes) <= allowed
        assert not ids & {str(value) for value in attributes.values()}


# -- without a provider, and bad arguments ----------------------------------------------------


@pytest.mark.looptime
async def test_with_no_op_providers_nothing_is_made_current_and_calls_work() -> None:
    set_call_hooks(
        [
            OpenTelemetryHook(
                tracer_provider=trace.NoOpTracerProvider(),
                meter_provider=metrics.NoOpMeterProvider(),
                per_key_spans=True,
            )
        ]
    )
    emulator = emulator_with_task()
    seeing = SpanSeeing(emulator.transport())
    async with client_on(emulator, transport=seeing) as client:
        await client.get_segment_task(*KEY)
        outcomes = await client.gather_segment_tasks([KEY, MISSING])
    assert [o.ok for o in outcomes] == [True, False]
    assert seeing.current == [trace.INVALID_SPAN_CONTEXT] * 3


@pytest.mark.parametrize(
    ("argument", "value"),
    [("tracer_provider", "x"), ("meter_provider", 1), ("per_key_spans", "yes")],
)
def test_bad_arguments_are_refused_by_name(argument: str, value: object) -> None:
    with pytest.raises(TypeError, match=argument):
        OpenTelemetryHook(**{argument: value})
