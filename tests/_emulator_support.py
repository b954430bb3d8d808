"""Helpers shared by the emulator's tests: one client factory for both deliveries."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from rtc_segment import Backoff, Credentials, SegmentClient
from rtc_segment._signing import Signer
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

IN_PROCESS = "in_process"
LOOPBACK = "loopback"
DELIVERIES = (IN_PROCESS, LOOPBACK)


class ManualClock:
    """A monotonic clock that moves only when told to: lifecycles without sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def client_for(
    emulator: Emulator, delivery: str, **kwargs: Any
) -> AsyncIterator[SegmentClient]:
    """A real SegmentClient talking to ``emulator`` in process or over the loopback server.

    Retries are off and backoff disabled unless the test asks otherwise, so each call is
    one request the test can reason about.
    """
    kwargs.setdefault("credentials", DEFAULT_CREDENTIALS)
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("backoff", Backoff.disabled())
    kwargs.setdefault("qps", 10_000.0)
    if delivery == IN_PROCESS:
        async with SegmentClient(transport=emulator.transport(), **kwargs) as client:
            yield client
    else:
        async with emulator.serve() as url, SegmentClient(endpoint=url, **kwargs) as client:
            yield client


@contextlib.asynccontextmanager
async def raw_http_for(emulator: Emulator, delivery: str) -> AsyncIterator[httpx.AsyncClient]:
    """A plain httpx client, for requests the real client would never send."""
    if delivery == IN_PROCESS:
        async with httpx.AsyncClient(
            transport=emulator.transport(), base_url="https://rtc.volcengineapi.com"
        ) as http:
            yield http
    else:
        async with emulator.serve() as url, httpx.AsyncClient(base_url=url) as http:
            yield http


async def send_signed(
    http: httpx.AsyncClient,
    query: Mapping[str, str],
    *,
    body: Any = None,
    credentials: Credentials = DEFAULT_CREDENTIALS,
    now: datetime | None = None,
) -> httpx.Response:
    """One request signed as the client signs it: GET with the query, or POST with ``body``
    (any JSON value) -- for actions and versions the client does not speak."""
    method = "GET" if body is None else "POST"
    content = b"" if body is None else json.dumps(body).encode()
    signed = Signer(credentials, region="cn-north-1").sign(
        method=method,
        host=http.base_url.netloc.decode(),
        query=dict(query),
        body=content,
        content_type=None if body is None else "application/json",
        now=now or datetime.now(UTC),
    )
    return await http.request(
        method, f"/?{signed.query_string}", headers=signed.headers, content=content or None
    )


def error_of(response: httpx.Response) -> dict[str, Any]:
    """``ResponseMetadata.Error`` of an answer (KeyError when it has none)."""
    error: dict[str, Any] = response.json()["ResponseMetadata"]["Error"]
    return error
