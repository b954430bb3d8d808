"""Guarantee 4: secrets stay secret.

A canary secret key and session token (and CustomConfig storage keys) go through every
failure path with DEBUG logging on for every logger and OpenTelemetry instrumentation on
(a span for every call): they appear in no log record, no exception message or traceback,
no ``repr`` of any object the caller can reach, not in ``client.stats``, and in no span
(name, attribute, event, status) or metric attribute.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rtc_segment import (
    AssumeRoleCredentialsProvider,
    AuthenticationError,
    Backoff,
    Credentials,
    CredentialsUnavailableError,
    CustomConfig,
    OidcCredentialsProvider,
    OpenTelemetryHook,
    ResponseFormatError,
    RtcSegmentError,
    SegmentClient,
    StorageConfig,
    StorageType,
    ThrottledError,
    TransportError,
    set_call_hooks,
)
from rtc_segment._signing import Signer
from rtc_segment.testing import Emulator, Fault

SECRET = "CANARYsecretKEY0x5eCr3t0000000000000000"
TOKEN = "CANARYsessionTOKEN0x70k3n00000000000000"
STORAGE_AK = "CANARYstorageACCESSkey00000"
STORAGE_SK = "CANARYstorageSECRETkey00000"
CANARIES = (SECRET, TOKEN, STORAGE_AK, STORAGE_SK)
CREDENTIALS = Credentials("AKLTcanaryaccount00000000", SECRET, TOKEN)
KEY = ("app", "room", "task")


def leaks(text: str) -> list[str]:
    return [canary for canary in CANARIES if canary in text]


def reachable_text(obj: object, depth: int = 0) -> Iterator[str]:
    """repr/str of ``obj`` and, for exceptions, of everything they carry and chain to."""
    yield repr(obj)
    yield str(obj)
    if depth > 4:
        return
    if isinstance(obj, BaseException):
        yield "".join(traceback.format_exception(obj))
        for value in (obj.__cause__, obj.__context__, *obj.args, *vars(obj).values()):
            if value is not None:
                yield from reachable_text(value, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from reachable_text(item, depth + 1)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("rtc_segment", "httpx", "httpcore", "hpack", "asyncio", "uvicorn"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def assert_no_leak(caplog: pytest.LogCaptureFixture, *objects: object) -> None:
    for record in caplog.records:
        texts = [record.getMessage(), repr(record.args), record.exc_text or ""]
        if record.exc_info and record.exc_info[1] is not None:
            texts.extend(reachable_text(record.exc_info[1]))
        for text in texts:
            assert not leaks(text), (record.name, text)
    for obj in objects:
        for text in reachable_text(obj):
            assert not leaks(text), text


class Telemetry:
    """OpenTelemetry on for every call (fan-out keys too), kept in memory to be read back."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metrics])
        set_call_hooks(
            [
                OpenTelemetryHook(
                    tracer_provider=self.tracer_provider,
                    meter_provider=self.meter_provider,
                    per_key_spans=True,
                )
            ]
        )

    def texts(self) -> Iterator[str]:
        """Everything the spans and metrics hold, as text."""
        for span in self.spans.get_finished_spans():
            yield span.name
            yield span.status.description or ""
            yield repr(dict(span.attributes or {}))
            for event in span.events:
                yield event.name
                yield repr(dict(event.attributes or {}))
        data = self.metrics.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    yield metric.name
                    for point in metric.data.data_points:
                        yield repr(dict(point.attributes or {}))


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    telemetry = Telemetry()
    yield telemetry
    telemetry.tracer_provider.shutdown()
    telemetry.meter_provider.shutdown()


def assert_no_leak_in_telemetry(telemetry: Telemetry) -> None:
    texts = list(telemetry.texts())
    assert any(text.startswith("RTC.") for text in texts), "spans were recorded"
    for text in texts:
        assert not leaks(text), text


def make_emulator(**kwargs: Any) -> Emulator:
    emulator = Emulator(CREDENTIALS, **kwargs)
    emulator.add_task(*KEY)
    return emulator


def client_for(emulator: Emulator, credentials: Any = CREDENTIALS, **kwargs: Any) -> Any:
    kwargs.setdefault("max_retries", 1)
    return SegmentClient(
        credentials, transport=emulator.transport(), backoff=Backoff.disabled(), **kwargs
    )


async def test_every_failure_path_keeps_the_canaries_out(
    debug_logs: pytest.LogCaptureFixture, telemetry: Telemetry
) -> None:
    seen: list[object] = []

    # 1. A wrong secret (the emulator knows the key id with another secret and token).
    emulator = Emulator(Credentials(CREDENTIALS.access_key_id, "other-secret", TOKEN))
    emulator.add_task(*KEY)
    async with client_for(emulator) as client:
        with pytest.raises(AuthenticationError, match="SignatureDoesNotMatch") as caught:
            await client.get_segment_task(*KEY)
        seen += [caught.value, client, client.stats]
    # ... and a wrong session token.
    emulator = Emulator(Credentials(CREDENTIALS.access_key_id, SECRET, "other-token"))
    async with client_for(emulator) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get_segment_task(*KEY)
        seen += [caught.value]

    emulator = make_emulator(qps=1)
    async with client_for(emulator, max_retries=0, qps=1000.0) as client:
        # 2. Throttling (the emulator's own ceiling, and an injected 429).
        outcomes = await client.gather_segment_tasks([KEY] * 5)
        assert any(isinstance(o.error, ThrottledError) for o in outcomes)
        seen += [outcomes]
        # 3. Transport errors and timeouts.
        emulator.qps = None
        for fault in (Fault.DROP, Fault.SLOW, Fault.HTTP_503, Fault.HTTP_429):
            emulator.faults.next(1, fault)
            with pytest.raises(RtcSegmentError) as caught:
                await client.get_segment_task(*KEY)
            seen.append(caught.value)
        # 4. Answers that cannot be understood.
        for fault in (Fault.TRUNCATED_BODY, Fault.HTML_BODY, Fault.EMPTY_BODY):
            emulator.faults.next(1, fault)
            with pytest.raises(ResponseFormatError) as caught:
                await client.get_segment_task(*KEY)
            seen.append(caught.value)
        # 5. Invalid input.
        with pytest.raises(ValueError, match="room_id") as invalid:
            await client.get_segment_task("app", "bad room", "task")
        seen.append(invalid.value)
        # 6. Success, for good measure, and everything the caller can reach.
        task = await client.get_segment_task(*KEY)
        seen += [task, client, client.stats, client.limiter, client._caller.signer, CREDENTIALS]
        seen.append(
            client._caller.signer.sign(
                method="GET", host="h", query={"A": "b"}, now=emulator.wall_clock()
            )
        )
    seen.append(client)  # closed
    with pytest.raises(RtcSegmentError) as closed:
        await client.get_segment_task(*KEY)
    seen.append(closed.value)

    assert_no_leak(debug_logs, *seen)
    assert debug_logs.records, "DEBUG logging was captured"
    assert_no_leak_in_telemetry(telemetry)


async def test_credential_errors_never_show_the_secret(tmp_path: Any) -> None:
    file = tmp_path / "credentials"
    file.write_text(f"[default]\naccess_key_id = AK\n{SECRET} broken line\n", encoding="utf-8")
    with pytest.raises(RtcSegmentError) as caught:
        Credentials.from_file(file)
    with pytest.raises(ValueError, match="secret_access_key") as bad_secret:
        Credentials("AK", SECRET + "\n")
    with pytest.raises(ValueError, match="session_token") as bad_token:
        Credentials("AK", "secret", TOKEN + " ")
    for error in (caught.value, bad_secret.value, bad_token.value):
        for text in reachable_text(error):
            assert not leaks(text), text
    assert not leaks(repr(Signer(CREDENTIALS, region="cn-north-1")))
    assert not leaks(str(CREDENTIALS)) and CREDENTIALS.account_fingerprint not in CANARIES


class StartTransport(httpx.AsyncBaseTransport):
    """StartSegment answers 500 (ambiguous), then GetSegmentTask says the task is there."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.bodies.append(body)
        action = request.url.params.get("Action")
        if action == "StartSegment":
            error = {"Code": "InternalError", "Message": "try later"}
            document: dict[str, Any] = {"ResponseMetadata": {"RequestId": "r", "Error": error}}
            return httpx.Response(500, json=document)
        if action == "GetSegmentTask":
            error = {"Code": "InternalError", "Message": "also down"}
            document = {"ResponseMetadata": {"RequestId": "r", "Error": error}}
            return httpx.Response(500, json=document)
        return httpx.Response(404)


async def test_custom_storage_keys_are_sent_but_never_shown(
    debug_logs: pytest.LogCaptureFixture, telemetry: Telemetry
) -> None:
    storage = StorageConfig(
        type=StorageType.CUSTOM,
        custom_config=CustomConfig(bucket="b", access_key=STORAGE_AK, secret_key=STORAGE_SK),
    )
    transport = StartTransport()
    async with SegmentClient(
        CREDENTIALS, transport=transport, backoff=Backoff.disabled(), max_retries=1
    ) as client:
        with pytest.raises(RtcSegmentError) as caught:
            await client.start_segment(*KEY, storage_config=storage)
        assert caught.value.ambiguous
        stats = client.stats
    # Sent to the service (that is their purpose) ...
    started = json.loads(transport.bodies[0])
    custom = started["StorageConfig"]["CustomConfig"]
    assert (custom["AccessKey"], custom["SecretKey"]) == (STORAGE_AK, STORAGE_SK)
    # ... and shown nowhere.
    assert_no_leak(debug_logs, caught.value, storage, client, stats)
    assert_no_leak_in_telemetry(telemetry)


async def test_the_loopback_server_path_logs_nothing_secret(
    debug_logs: pytest.LogCaptureFixture, telemetry: Telemetry
) -> None:
    # Real sockets, so that httpx's and httpcore's own DEBUG logging runs too.
    emulator = make_emulator()
    wrong = Credentials(CREDENTIALS.access_key_id, "another-" + SECRET[::-1], TOKEN)
    errors: list[object] = []
    async with emulator.serve() as url:
        for credentials in (CREDENTIALS, wrong):
            async with SegmentClient(
                credentials, endpoint=url, backoff=Backoff.disabled(), max_retries=1
            ) as client:
                emulator.faults.next(1, Fault.DROP)
                try:
                    await client.get_segment_task(*KEY)
                except RtcSegmentError as error:
                    errors.append(error)
                errors.append(client.stats)
    assert any(isinstance(e, (AuthenticationError, TransportError)) for e in errors)
    assert any(r.name.startswith("httpcore") for r in debug_logs.records)
    assert_no_leak(debug_logs, *errors)
    assert_no_leak_in_telemetry(telemetry)


OIDC_TOKEN = "CANARYoidcTOKEN0x01dc000000000000000"


async def test_temporary_credentials_and_tokens_never_show(
    debug_logs: pytest.LogCaptureFixture, telemetry: Telemetry, tmp_path: Any
) -> None:
    """Issued secret keys and session tokens, the OIDC token and the long-term key that
    assumes a role stay out of every log, repr, error and span: fetching, refreshing in
    the background, a refresh that fails, a refused key retried, a refused OIDC token."""
    emulator = make_emulator(credentials_lifetime=900)
    emulator.add_oidc_token(OIDC_TOKEN)
    token_file = tmp_path / "token"
    token_file.write_text(OIDC_TOKEN, encoding="utf-8")
    options: dict[str, Any] = {
        "endpoint": "http://127.0.0.1:1",
        "transport": emulator.transport(),
        "clock": emulator.wall_clock,
    }
    oidc = OidcCredentialsProvider("trn:iam::1:role/r", token_file, **options)
    assumed = AssumeRoleCredentialsProvider(CREDENTIALS, "trn:iam::1:role/r", **options)
    seen: list[object] = [oidc, assumed]
    issued: list[Credentials] = []
    for provider in (oidc, assumed):
        async with client_for(emulator, provider, clock=emulator.wall_clock) as client:
            await client.get_segment_task(*KEY)
            issued.append(provider.current())  # type: ignore[arg-type]
            emulator.expire_issued_credentials()  # refused, refreshed, retried
            await client.get_segment_task(*KEY)
            issued.append(provider.current())  # type: ignore[arg-type]
            seen += [client, client.stats, provider.current()]
    # A refresh that fails (STS down) after the key was refused.
    emulator.faults.next(3, Fault.HTTP_500, action="AssumeRoleWithOIDC")
    oidc.reject(oidc.current())  # type: ignore[arg-type]
    with pytest.raises(CredentialsUnavailableError) as failed:
        await oidc.load()
    seen.append(failed.value)
    # STS refusing the OIDC token.
    emulator.remove_oidc_token(OIDC_TOKEN)
    with pytest.raises(CredentialsUnavailableError) as refused:
        await OidcCredentialsProvider("trn:iam::1:role/r", token_file, **options).load()
    seen.append(refused.value)

    secrets = [OIDC_TOKEN, *CANARIES]
    for credentials in issued:
        secrets += [credentials.secret_access_key, credentials.session_token or ""]
    assert len(set(secrets)) == len(secrets)
    for record in debug_logs.records:
        text = record.getMessage() + repr(record.args)
        assert not [secret for secret in secrets if secret in text], text
    for obj in seen:
        for text in reachable_text(obj):
            assert not [secret for secret in secrets if secret in text], text
    for text in telemetry.texts():
        assert not [secret for secret in secrets if secret in text], text
