"""The deliveries depend only on the request-handler seam: any ``RequestHandler`` works."""

from __future__ import annotations

import httpx
import pytest

from rtc_segment.testing import (
    Answer,
    EmulatorASGIApp,
    EmulatorRequest,
    EmulatorTransport,
    RequestHandler,
)


class Canned:
    """A request handler that remembers what it was handed and answers from a script."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.seen: list[EmulatorRequest] = []

    async def handle(self, request: EmulatorRequest) -> Answer:
        self.seen.append(request)
        return self.answer


TEAPOT = Answer(418, (("content-type", "text/plain"), ("x-canned", "yes")), b"short and stout")


def _checked(handler: RequestHandler) -> RequestHandler:
    """Where a type checker confirms that the double satisfies the protocol."""
    return handler


@pytest.mark.parametrize("delivery", ["transport", "asgi"])
async def test_a_delivery_hands_the_request_over_and_delivers_the_answer(delivery: str) -> None:
    handler = Canned(TEAPOT)
    transport: httpx.AsyncBaseTransport = (
        EmulatorTransport(_checked(handler))
        if delivery == "transport"
        else httpx.ASGITransport(app=EmulatorASGIApp(_checked(handler)))
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator.test") as http:
        response = await http.post(
            "/some/path?Action=A&Version=V&x=%20y", content=b"{}", headers={"X-Probe": "1"}
        )
    assert (response.status_code, response.content) == (418, b"short and stout")
    assert response.headers["x-canned"] == "yes"
    (request,) = handler.seen
    assert (request.method, request.path, request.query) == (
        "POST",
        "/some/path",
        "Action=A&Version=V&x=%20y",
    )
    assert request.headers["x-probe"] == "1"  # names are lower-cased
    assert request.body == b"{}"


@pytest.mark.looptime
async def test_the_in_process_delivery_waits_out_the_answer_delay_or_times_out() -> None:
    late = Canned(Answer(200, (), b"late", delay=3.0))
    async with httpx.AsyncClient(
        transport=EmulatorTransport(late), base_url="http://emulator.test"
    ) as http:
        assert (await http.get("/", timeout=5.0)).content == b"late"
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/", timeout=2.0)
    assert len(late.seen) == 2


async def test_a_dropped_answer_is_a_protocol_error_in_process() -> None:
    handler = Canned(Answer(200, (), b"", drop=True))
    async with httpx.AsyncClient(
        transport=EmulatorTransport(handler), base_url="http://emulator.test"
    ) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/")
