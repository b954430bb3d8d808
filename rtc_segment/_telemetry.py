"""The default telemetry: an ``OpenTelemetryHook`` on the global providers, when
``opentelemetry-api`` is installed.

OpenTelemetry's guidance for natively instrumented libraries: an application gets their
spans and metrics by configuring the SDK, nothing more. So the package registers
:func:`default_hook` with ``_instrumentation.register_default_hook`` when it is imported,
and the HTTP path looks it up at its first call. This module sits above ``_otel`` in the
layers (docs/architecture.md): no core module imports either, and ``_otel`` -- with
``opentelemetry`` -- is imported only at that first call, and only when the default
telemetry is on (``RTC_SEGMENT_TELEMETRY``, ``set_default_telemetry``).

The hook is made once and gets its tracer and meter from ``trace.get_tracer`` and
``metrics.get_meter`` without a provider: OpenTelemetry's proxies, which forward to the
global providers as soon as the application sets them -- after the client was made, or
after its first call, as well as before.
"""

from __future__ import annotations

from ._instrumentation import CallHook

__all__ = ["default_hook"]

_made: CallHook | None = None


def default_hook(set_hooks: tuple[CallHook, ...]) -> CallHook | None:
    """The hook to add to ``set_hooks``: the process's one default ``OpenTelemetryHook``;
    ``None`` when ``opentelemetry-api`` cannot be imported, or when one of ``set_hooks``
    already is an ``OpenTelemetryHook`` (its own providers and options win, and a call
    gets one span, not two)."""
    global _made
    try:
        from ._otel import OpenTelemetryHook
    except ImportError:  # no extra `otel`: no telemetry, nothing to pay
        return None
    if any(isinstance(hook, OpenTelemetryHook) for hook in set_hooks):
        return None
    if _made is None:
        _made = OpenTelemetryHook()
    return _made


def forget_default_hook() -> None:
    """Make the next lookup build a new hook (tests that reset OpenTelemetry's globals:
    a proxy tracer keeps the provider it found first)."""
    global _made
    _made = None
