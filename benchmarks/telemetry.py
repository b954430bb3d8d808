"""What instrumentation costs the hot path: telemetry off, the default (telemetry on, with
``opentelemetry-api`` installed but no SDK configured: OpenTelemetry's no-ops), and
OpenTelemetry with the SDK recording every span and measurement; prints one table.

Run: ``python benchmarks/telemetry.py`` (about a minute), or ``--quick`` for a smoke run.
Needs the ``bench`` (or ``test``) extra: ``opentelemetry-api`` and ``opentelemetry-sdk``.

1. **Sequential calls**: ``get_segment_task`` one at a time against the in-process
   emulator (no sockets, so the client's own work is as large a share of a call as it can
   be: the worst case for any overhead). Calls/s and µs per call.
2. **Fan-out**: ``gather_segment_tasks`` over N keys, ceiling off, against the same
   emulator. Keys/s. (Its calls are counted in the metrics; by default they have no span
   of their own, only the fan-out has one.)
3. **The hooks alone**: µs for what one call tells the hooks (start, one limiter wait,
   end), with nothing else running: the overhead itself, without the noise of a call.

Contenders are interleaved within each repeat (each repeat starting with the next one) and
the median over repeats is reported. Rates are per second of this process's CPU time (all
its threads, the SDK's export thread included), not of wall time: on a shared machine the
wall clock also counts other processes' work, and the CPU spent is what instrumentation
costs.
"The SDK" is a ``TracerProvider`` with a ``BatchSpanProcessor`` whose exporter discards
(so export I/O is not counted) and a ``MeterProvider`` with an in-memory reader.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import median
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from rtc_segment import (
    Backoff,
    CallHook,
    OpenTelemetryHook,
    SegmentClient,
    TaskKey,
    set_call_hooks,
    set_default_telemetry,
)
from rtc_segment._instrumentation import CallDetails, CallObservation
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

KEY = TaskKey("bench-app", "room", "task")


class Discarding(SpanExporter):
    """Takes spans and drops them: export I/O is not what is measured."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class Contender:
    """One way of running: which hooks are set, and whether the default telemetry is on."""

    def __init__(self, name: str, hooks: list[CallHook], *, default_telemetry: bool) -> None:
        self.name = name
        self.hooks = hooks
        self.default_telemetry = default_telemetry


# One SDK set-up for the whole run, as an application has (its span processor's thread
# lives as long as the process), shut down at the end.
TRACER_PROVIDER = TracerProvider()
TRACER_PROVIDER.add_span_processor(BatchSpanProcessor(Discarding()))
METER_PROVIDER = MeterProvider(metric_readers=[InMemoryMetricReader()])

CONTENDERS = [
    Contender("telemetry off (no hooks)", [], default_telemetry=False),
    # The global providers are never set in this process: the default hook's tracer and
    # meter are OpenTelemetry's proxies, no-ops -- what a library user without the SDK pays.
    Contender("default: on, no SDK configured", [], default_telemetry=True),
    # A set OpenTelemetryHook takes the default's place.
    Contender(
        "OpenTelemetryHook, SDK recording",
        [OpenTelemetryHook(tracer_provider=TRACER_PROVIDER, meter_provider=METER_PROVIDER)],
        default_telemetry=True,
    ),
]


async def sequential(emulator: Emulator, calls: int) -> float:
    """Calls per CPU-second, one call at a time."""
    async with SegmentClient(
        DEFAULT_CREDENTIALS,
        transport=emulator.transport(),
        qps=1e9,
        backoff=Backoff.disabled(),
    ) as client:
        for _ in range(20):  # warm up
            await client.get_segment_task(*KEY)
        gc.collect()
        started = time.process_time()
        for _ in range(calls):
            await client.get_segment_task(*KEY)
        return calls / (time.process_time() - started)


async def fan_out(emulator: Emulator, keys: int) -> float:
    """Keys per CPU-second through gather_segment_tasks, ceiling off."""
    async with SegmentClient(
        DEFAULT_CREDENTIALS,
        transport=emulator.transport(),
        qps=1e9,
        backoff=Backoff.disabled(),
    ) as client:
        await client.gather_segment_tasks([KEY] * 20)  # warm up
        gc.collect()
        started = time.process_time()
        outcomes = await client.gather_segment_tasks([KEY] * keys)
        spent = time.process_time() - started
    assert all(outcome.ok for outcome in outcomes)
    return keys / spent


def hooks_alone(calls: int) -> float:
    """µs per call for telling the hooks of one call (start, one wait, end)."""
    details = CallDetails("GetSegmentTask", KEY, False, "rtc.volcengineapi.com", 443)
    clock = time.perf_counter
    started = time.process_time()
    for _ in range(calls):
        observation = CallObservation.start(details, clock)
        if observation is not None:
            observation.limiter_waited(0.0)
            observation.answered(200, "request-id")
            observation.end(None)
    return (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per contender")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 15)
    calls, keys, bare = (200, 200, 2_000) if args.quick else (1_000, 1_000, 10_000)
    if isinstance(trace.get_tracer_provider(), TracerProvider) or isinstance(
        metrics.get_meter_provider(), MeterProvider
    ):
        raise SystemExit("a global OpenTelemetry provider is set: 'no SDK' would be wrong")

    emulator = Emulator(qps=None, record_limit=1000)
    emulator.add_task(*KEY)
    results: dict[str, dict[str, list[float]]] = {
        c.name: {"sequential": [], "fan-out": [], "hooks": []} for c in CONTENDERS
    }
    for repeat in range(repeats):
        # Each repeat starts with another contender, so that none always follows the same.
        shift = repeat % len(CONTENDERS)
        for contender in CONTENDERS[shift:] + CONTENDERS[:shift]:
            set_call_hooks(contender.hooks)
            set_default_telemetry(contender.default_telemetry)
            try:
                row = results[contender.name]
                row["sequential"].append(asyncio.run(sequential(emulator, calls)))
                row["fan-out"].append(asyncio.run(fan_out(emulator, keys)))
                row["hooks"].append(hooks_alone(bare))
            finally:
                set_call_hooks(None)
                set_default_telemetry(None)
    TRACER_PROVIDER.shutdown()
    METER_PROVIDER.shutdown()

    print(
        f"Instrumentation overhead: in-process emulator, median of {repeats} interleaved "
        f"repeats ({calls} sequential calls, fan-out of {keys} keys, {bare} bare hook rounds)"
    )
    header = (
        f"  {'telemetry':<34} {'calls/s':>9} {'µs/call':>8} {'vs off':>8} "
        f"{'fan-out keys/s':>15} {'vs off':>8} {'hooks µs/call':>14}   (CPU time)"
    )
    print(header)
    base = results[CONTENDERS[0].name]
    base_seq, base_fan = median(base["sequential"]), median(base["fan-out"])
    for contender in CONTENDERS:
        row = results[contender.name]
        seq, fan, bare_us = median(row["sequential"]), median(row["fan-out"]), median(row["hooks"])
        print(
            f"  {contender.name:<34} {seq:>9.0f} {1e6 / seq:>8.1f} "
            f"{(seq / base_seq - 1) * 100:>+7.1f}% {fan:>15.0f} "
            f"{(fan / base_fan - 1) * 100:>+7.1f}% {bare_us:>14.2f}"
        )
    print(f"(cpus: {os.cpu_count()}, python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
