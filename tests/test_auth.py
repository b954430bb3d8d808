"""VolcengineAuth: the signer as an httpx.Auth for the user's own httpx clients.

Byte-equal to the official SDK (the vendored vectors and the SDK as oracle), accepted by the
emulator's verifier from both client kinds, pinned to one host, and never letting a
redirect carry the signature headers to another origin.
"""

from __future__ import annotations

import asyncio
import json
import re
import runpy
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from _signing_support import (
    VECTORS,
    SdkCase,
    check_against_vector,
    sdk_cases,
    vector_credentials,
    vector_now,
    vector_params,
)
from hypothesis import given, settings

import rtc_segment.testing
from rtc_segment import Credentials, CredentialsError, VolcengineAuth
from rtc_segment._auth import UnsafeRedirectError
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator
from rtc_segment.testing._auth import AccessKey, RequestView, authenticate

UTC = UTC
NOW = datetime(2024, 3, 5, 7, 8, 9, tzinfo=UTC)
SECRET = "c2VjcmV0LW5ldmVyLXByaW50ZWQ="
TOKEN = "STS.session-token-never-printed"
STS = Credentials("AKLTstsAccessKey", SECRET, TOKEN)
HOST = "rtc.volcengineapi.com"
BASE_URL = f"https://{HOST}"
SIGNATURE_HEADERS = ("authorization", "x-date", "x-content-sha256", "x-security-token")
GET_TASK = {"Action": "GetSegmentTask", "Version": "2022-06-01"}
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "auth.md"


def signed(auth: httpx.Auth, request: httpx.Request) -> httpx.Request:
    """``request`` as ``auth`` hands it to the transport (no network)."""
    return next(auth.sync_auth_flow(request))


def fixed_clock(now: datetime = NOW) -> Callable[[], datetime]:
    """A clock that always reads ``now``."""
    return lambda: now


def verify(request: httpx.Request, credentials: Credentials, *, now: datetime) -> AccessKey:
    """The emulator's verifier on a request as it reached the transport."""
    key = AccessKey(credentials, account="account")
    return authenticate(
        RequestView(
            method=request.method,
            path=request.url.path,
            query_pairs=request.url.params.multi_items(),
            header=request.headers.get,
            body=request.read(),
        ),
        lookup={credentials.access_key_id: key}.get,
        now=now,
        region="cn-north-1",
        service="rtc",
    )


# --- byte-equal to the official SDK ------------------------------------------------------------


def _vector_request(given_: dict[str, Any]) -> httpx.Request:
    return httpx.Request(
        given_["method"],
        f"https://{given_['host']}{given_['path']}",
        params=given_["query"],
        headers=given_["headers"],
        content=given_["body"].encode(),
    )


# httpx always sends a Host header: a vector without one is for sign_headers only.
@pytest.mark.parametrize(
    "vector", vector_params([v for v in VECTORS if "Host" in v["input"]["headers"]])
)
def test_vector(vector: dict[str, Any]) -> None:
    given_ = vector["input"]
    expected = vector["output"]
    auth = VolcengineAuth(
        vector_credentials(given_),
        region=given_["region"],
        service=given_["service"],
        host=given_["host"],
        clock=fixed_clock(vector_now(given_)),
    )
    request = signed(auth, _vector_request(given_))
    # As a dict of names as spelled (httpx looks names up case-insensitively).
    sent = {name.decode(): value.decode() for name, value in request.headers.raw}
    check_against_vector(sent, expected, given_["headers"])
    # Every given header goes out unchanged, signed or not ...
    for name, value in given_["headers"].items():
        assert request.headers[name] == value
    # ... and the query goes out exactly as it was signed.
    assert request.url.query.decode("ascii") == expected["canonical_request"].split("\n")[2]


def test_the_vectors_cover_both_methods_and_every_header_rule() -> None:
    names = {vector["name"] for vector in VECTORS}
    assert {"get_header_name_case", "post_json_body", "get_session_token"} <= names
    assert len(VECTORS) == 16


@settings(max_examples=200, deadline=None)
@given(case=sdk_cases)
def test_same_headers_and_query_as_the_official_sdk(case: SdkCase) -> None:
    expected = case.sdk_headers()
    from volcengine.util.Util import Util

    auth = VolcengineAuth(
        Credentials(case.ak, case.sk, case.token),
        region=case.region,
        host=case.host,
        clock=fixed_clock(case.now),
    )
    request = signed(
        auth,
        httpx.Request(
            case.method,
            f"https://{case.host}/",
            params=case.query,
            headers=case.headers,
            content=case.body_bytes,
        ),
    )
    for name, value in expected.items():
        assert request.headers[name] == value, name
    # The query on the wire is the SDK's, byte for byte.
    assert request.url.query.decode("ascii") == Util.norm_query(
        {key: list(v) if not isinstance(v, str) else v for key, v in case.query.items()}
    )


# --- accepted by the emulator, from both client kinds ------------------------------------------


@pytest.fixture
def emulator() -> Emulator:
    emulator = Emulator()
    emulator.add_task("app", "room", "task", duration=37)
    return emulator


def _accepted(emulator: Emulator) -> list[tuple[str | None, str | None]]:
    # (action, error code) of every request; an account is set only once verified.
    assert all(record.account is not None for record in emulator.requests)
    return [(record.action, record.error_code) for record in emulator.requests]


async def test_async_client_get_with_query_and_post_with_json(emulator: Emulator) -> None:
    auth = VolcengineAuth(DEFAULT_CREDENTIALS, clock=emulator.wall_clock)
    async with httpx.AsyncClient(
        base_url=BASE_URL, auth=auth, transport=emulator.transport()
    ) as client:
        got = await client.get(
            "/", params={**GET_TASK, "AppId": "app", "RoomId": "room", "TaskId": "task"}
        )
        stopped = await client.post(
            "/",
            params={"Action": "StopSegment", "Version": "2022-06-01"},
            json={"AppId": "app", "RoomId": "room", "TaskId": "task"},
        )
    assert got.status_code == 200, got.text
    assert got.json()["Result"]["SegmentTask"]["Duration"] == 37
    assert stopped.status_code == 200, stopped.text
    assert _accepted(emulator) == [("GetSegmentTask", None), ("StopSegment", None)]


async def test_a_streamed_body_is_read_and_signed(emulator: Emulator) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"AppId":"app","RoomId":"room",'
        yield b'"TaskId":"task"}'

    auth = VolcengineAuth(DEFAULT_CREDENTIALS, clock=emulator.wall_clock)
    async with httpx.AsyncClient(
        base_url=BASE_URL, auth=auth, transport=emulator.transport()
    ) as client:
        response = await client.post(
            "/",
            params={"Action": "StopSegment", "Version": "2022-06-01"},
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 200, response.text
    assert _accepted(emulator) == [("StopSegment", None)]


async def test_sync_client_against_the_served_emulator(emulator: Emulator) -> None:
    async with emulator.serve() as base_url:
        host = httpx.URL(base_url).netloc.decode("ascii")
        auth = VolcengineAuth(DEFAULT_CREDENTIALS, host=host, clock=emulator.wall_clock)

        def calls() -> tuple[httpx.Response, httpx.Response]:
            with httpx.Client(base_url=base_url, auth=auth) as client:
                got = client.get(
                    "/", params={**GET_TASK, "AppId": "app", "RoomId": "room", "TaskId": "task"}
                )
                stopped = client.post(
                    "/",
                    params={"Action": "StopSegment", "Version": "2022-06-01"},
                    json={"AppId": "app", "RoomId": "room", "TaskId": "task"},
                )
            return got, stopped

        # The sync client blocks, so it runs in a thread while this loop serves it.
        got, stopped = await asyncio.to_thread(calls)
    assert got.status_code == 200, got.text
    assert stopped.status_code == 200, stopped.text
    assert _accepted(emulator) == [("GetSegmentTask", None), ("StopSegment", None)]


async def test_the_emulator_rejects_a_wrong_secret(emulator: Emulator) -> None:
    # The control for the tests above: the emulator does check what the Auth signs.
    wrong = Credentials(DEFAULT_CREDENTIALS.access_key_id, "not-the-secret")
    auth = VolcengineAuth(wrong, clock=emulator.wall_clock)
    async with httpx.AsyncClient(
        base_url=BASE_URL, auth=auth, transport=emulator.transport()
    ) as client:
        response = await client.get(
            "/", params={**GET_TASK, "AppId": "app", "RoomId": "room", "TaskId": "task"}
        )
    assert response.status_code == 401
    assert response.json()["ResponseMetadata"]["Error"]["Code"] == "SignatureDoesNotMatch"


async def test_another_action_is_signed_as_the_service_expects(emulator: Emulator) -> None:
    # An action the emulator does not serve: it answers InvalidActionOrVersion. The request
    # as it reached the transport is also checked by the emulator's verifier directly.
    seen: list[httpx.Request] = []
    inner = emulator.transport()

    async def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return await inner.handle_async_request(request)

    auth = VolcengineAuth(DEFAULT_CREDENTIALS, clock=emulator.wall_clock)
    async with httpx.AsyncClient(
        base_url=BASE_URL, auth=auth, transport=httpx.MockTransport(recording)
    ) as client:
        response = await client.get(
            "/",
            params={"Action": "GetRecordTask", "Version": "2023-11-01", "AppId": "app",
                    "RoomId": "room", "TaskId": "task"},
        )  # fmt: skip
    assert response.json()["ResponseMetadata"]["Error"]["Code"] == "InvalidActionOrVersion"
    assert verify(seen[0], DEFAULT_CREDENTIALS, now=emulator.wall_clock()).account == "account"


# --- one host ----------------------------------------------------------------------------------


class Recorder:
    """A mock transport's handler that answers 200 and keeps what reached it."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json={})


def test_another_host_is_refused_before_anything_is_sent() -> None:
    recorder = Recorder()
    auth = VolcengineAuth(STS)  # pinned to the documented host of cn-north-1
    with httpx.Client(auth=auth, transport=httpx.MockTransport(recorder)) as client:
        assert client.get(f"{BASE_URL}/", params=GET_TASK).status_code == 200
        for url in (
            "https://evil.example/",
            f"https://{HOST}:8443/",
            f"https://{HOST}.evil.example/",
            "https://open-ap-singapore-1.volcengineapi.com/",
        ):
            with pytest.raises(
                ValueError, match=r"signs requests to 'rtc\.volcengineapi\.com' only"
            ):
                client.get(url, params=GET_TASK)
    assert [request.url.host for request in recorder.requests] == [HOST]


async def test_another_host_is_refused_by_the_async_client_too() -> None:
    recorder = Recorder()
    auth = VolcengineAuth(STS, region="ap-southeast-1")
    async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(recorder)) as client:
        await client.get("https://open-ap-singapore-1.volcengineapi.com/")
        with pytest.raises(ValueError, match="any_host=True"):
            await client.get(f"{BASE_URL}/")
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    ("pin", "url", "allowed"),
    [
        ("127.0.0.1:8080", "http://127.0.0.1:8080/", True),
        ("127.0.0.1:8080", "http://127.0.0.1:8081/", False),
        ("127.0.0.1:8080", "http://127.0.0.1/", False),
        ("Example.COM", "https://example.com/", True),
        ("example.com", "https://example.com:443/", True),  # the default port, spelled out
        ("example.com", "http://example.com/", True),
        ("example.com", "https://example.com:8443/", False),
        ("example.com:443", "https://example.com/", True),
        ("example.com:443", "http://example.com/", False),
    ],
)
def test_host_pin(pin: str, url: str, allowed: bool) -> None:
    auth = VolcengineAuth(STS, host=pin, clock=fixed_clock())
    if allowed:
        assert "Authorization" in signed(auth, httpx.Request("GET", url)).headers
    else:
        with pytest.raises(ValueError, match="signs requests to"):
            signed(auth, httpx.Request("GET", url))


def test_any_host_signs_for_whatever_host_a_request_goes_to() -> None:
    auth = VolcengineAuth(STS, any_host=True, clock=fixed_clock())
    for url in ("https://a.example/", "http://127.0.0.1:9/"):
        request = signed(auth, httpx.Request("GET", url))
        assert verify(request, STS, now=NOW)


@pytest.mark.parametrize(
    ("kwargs", "error", "complaint"),
    [
        ({"host": "h", "any_host": True}, ValueError, "not both"),
        ({"service": "vod"}, ValueError, "host: no documented endpoint for service 'vod'"),
        ({"region": "cn-south-9"}, ValueError, "host: no documented endpoint"),
        ({"host": "https://h"}, ValueError, "host must be"),
        ({"host": "h/path"}, ValueError, "host must be"),
        ({"host": "user@h"}, ValueError, "host must be"),
        ({"host": "h:port"}, ValueError, "host must be"),
        ({"host": ""}, ValueError, "host must be"),
        ({"host": 8080}, TypeError, "host must be a str"),
        ({"any_host": 1}, TypeError, "any_host must be a bool"),
        ({"region": "cn north"}, ValueError, "region must be"),
        ({"service": "rtc\r\nX-Injected: 1"}, ValueError, "service must be"),
        ({"clock": "now"}, TypeError, "clock must be"),
    ],
)
def test_bad_arguments_are_named(
    kwargs: dict[str, Any], error: type[Exception], complaint: str
) -> None:
    with pytest.raises(error, match=complaint):
        VolcengineAuth(STS, **kwargs)


def test_other_services_sign_with_their_own_host() -> None:
    auth = VolcengineAuth(STS, service="vod", host="vod.volcengineapi.com", clock=fixed_clock())
    request = signed(auth, httpx.Request("GET", "https://vod.volcengineapi.com/"))
    assert "/20240305/cn-north-1/vod/request, " in request.headers["Authorization"]


def test_credentials_resolve_like_the_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.volc/credentials
    monkeypatch.delenv("VOLC_ACCESSKEY", raising=False)
    monkeypatch.delenv("VOLC_SECRETKEY", raising=False)
    with pytest.raises(CredentialsError, match="no credentials found"):
        VolcengineAuth()
    monkeypatch.setenv("VOLC_ACCESSKEY", "AKLTfromEnvironment")
    monkeypatch.setenv("VOLC_SECRETKEY", SECRET)
    request = signed(VolcengineAuth(clock=fixed_clock()), httpx.Request("GET", f"{BASE_URL}/"))
    assert "Credential=AKLTfromEnvironment/" in request.headers["Authorization"]


# --- what is signed is what is sent ------------------------------------------------------------


def test_path_and_query_go_out_in_the_sdks_encoding() -> None:
    auth = VolcengineAuth(STS, any_host=True, clock=fixed_clock())
    request = signed(
        auth,
        httpx.Request("GET", "https://h/a b:c", params=[("b", "x y+z"), ("a", "2"), ("a", "1")]),
    )
    # Sorted by key (a repeated key keeps its order), %20 for a space, ':' encoded.
    assert request.url.raw_path == b"/a%20b%3Ac?a=2&a=1&b=x%20y%2Bz"
    assert verify(request, STS, now=NOW)


def test_a_lower_case_content_type_is_kept_and_signed() -> None:
    # The SDK would add a second Content-Type; one header, with the SDK's spelling, is sent.
    auth = VolcengineAuth(STS, clock=fixed_clock())
    request = signed(
        auth,
        httpx.Request(
            "POST", f"{BASE_URL}/", headers={"content-type": "application/json"}, content=b"{}"
        ),
    )
    assert request.headers.get_list("content-type") == ["application/json"]
    assert "SignedHeaders=content-type;host;" in request.headers["Authorization"]
    assert verify(request, STS, now=NOW)


def test_a_post_without_content_type_gets_the_sdks_default() -> None:
    auth = VolcengineAuth(STS, clock=fixed_clock())
    request = signed(auth, httpx.Request("POST", f"{BASE_URL}/", content=b"a=1"))
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded; charset=utf-8"
    assert verify(request, STS, now=NOW)


def test_a_repeated_signed_header_is_refused() -> None:
    auth = VolcengineAuth(STS, clock=fixed_clock())
    request = httpx.Request("GET", f"{BASE_URL}/", headers=[("X-Tag", "a"), ("X-Tag", "b")])
    with pytest.raises(ValueError, match="'X-Tag' appears more than once"):
        signed(auth, request)


def test_signing_again_replaces_the_old_signature() -> None:
    later = datetime(2024, 3, 5, 8, 0, 0, tzinfo=UTC)
    first = signed(VolcengineAuth(STS, clock=fixed_clock()), httpx.Request("GET", f"{BASE_URL}/"))
    again = signed(VolcengineAuth(STS, clock=fixed_clock(later)), first)
    assert again.headers.get_list("x-date") == ["20240305T080000Z"]
    assert len(again.headers.get_list("authorization")) == 1
    assert verify(again, STS, now=later)


# --- redirects ---------------------------------------------------------------------------------


class Site:
    """The API host answers a redirect; every request that arrives anywhere is kept."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.arrived: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.arrived.append(request)
        if self.is_the_api(request):
            return httpx.Response(302, headers={"Location": self.location})
        return httpx.Response(200, json={"elsewhere": True})

    @staticmethod
    def is_the_api(request: httpx.Request) -> bool:
        """Whether ``request`` went to the API: https, its host and default port, "/"."""
        url = request.url
        return (url.scheme, url.netloc, url.path) == ("https", HOST.encode(), "/")

    def elsewhere(self) -> list[httpx.Request]:
        """What arrived anywhere but the API."""
        return [request for request in self.arrived if not self.is_the_api(request)]


def _carries(request: httpx.Request) -> list[str]:
    return [name for name in SIGNATURE_HEADERS if name in request.headers]


@pytest.fixture(params=["sync", "async"])
def send(request: pytest.FixtureRequest) -> Callable[..., httpx.Response]:
    """``send(site, auth, follow_redirects=..., guard=...)`` with a sync or async client."""

    def sync_send(
        site: Site, auth: VolcengineAuth, *, follow_redirects: bool, guard: bool = False
    ) -> httpx.Response:
        hooks = {"request": [auth.redirect_guard]} if guard else {}
        with httpx.Client(
            auth=auth,
            transport=httpx.MockTransport(site),
            follow_redirects=follow_redirects,
            event_hooks=hooks,
        ) as client:
            return client.get(f"{BASE_URL}/", params=GET_TASK)

    async def async_send_inner(
        site: Site, auth: VolcengineAuth, follow_redirects: bool, guard: bool
    ) -> httpx.Response:
        async def handler(request: httpx.Request) -> httpx.Response:
            return site(request)

        hooks = {"request": [auth.async_redirect_guard]} if guard else {}
        async with httpx.AsyncClient(
            auth=auth,
            transport=httpx.MockTransport(handler),
            follow_redirects=follow_redirects,
            event_hooks=hooks,
        ) as client:
            return await client.get(f"{BASE_URL}/", params=GET_TASK)

    def async_send(
        site: Site, auth: VolcengineAuth, *, follow_redirects: bool, guard: bool = False
    ) -> httpx.Response:
        return asyncio.run(async_send_inner(site, auth, follow_redirects, guard))

    return sync_send if request.param == "sync" else async_send


def test_httpx_alone_forwards_the_signature_headers(send: Callable[..., httpx.Response]) -> None:
    # Why the Auth has to act: a plain header-setting Auth, redirects followed. httpx drops
    # Authorization on the way to the other origin, and nothing else.
    class Plain(httpx.Auth):
        def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
            request.headers.update({"Authorization": "a", "X-Date": "d", "X-Security-Token": "t"})
            yield request

    site = Site("https://evil.example/collect")
    send(site, Plain(), follow_redirects=True)  # type: ignore[arg-type]
    assert _carries(site.elsewhere()[0]) == ["x-date", "x-security-token"]


@pytest.mark.parametrize(
    "location", ["https://evil.example/collect", f"http://{HOST}/", f"https://{HOST}:8443/"]
)
def test_a_redirect_not_followed_hands_back_no_signature(
    send: Callable[..., httpx.Response], location: str
) -> None:
    site = Site(location)
    response = send(site, VolcengineAuth(STS), follow_redirects=False)
    assert response.status_code == 302
    assert response.next_request is not None
    assert _carries(response.next_request) == []
    assert site.arrived == [response.request]  # nothing went anywhere else


def test_sending_the_next_request_on_signs_it_afresh_or_refuses() -> None:
    auth = VolcengineAuth(STS, clock=fixed_clock())
    for location, goes_out in (("/moved", True), ("https://evil.example/", False)):
        site = Site(location)
        with httpx.Client(auth=auth, transport=httpx.MockTransport(site)) as client:
            response = client.get(f"{BASE_URL}/")
            assert response.next_request is not None
            if goes_out:
                client.send(response.next_request)
                assert verify(site.arrived[-1], STS, now=NOW)
            else:
                with pytest.raises(ValueError, match="signs requests to"):
                    client.send(response.next_request)
                assert len(site.arrived) == 1


def test_a_followed_redirect_to_another_origin_is_reported(
    send: Callable[..., httpx.Response],
) -> None:
    site = Site("https://evil.example/collect")
    with pytest.raises(UnsafeRedirectError, match=r"'evil\.example'.*redirect_guard"):
        send(site, VolcengineAuth(STS), follow_redirects=True)
    # httpx sends the hop before the Auth sees any answer; the error says what happened.
    assert "authorization" not in site.elsewhere()[0].headers


@pytest.mark.parametrize(
    "location",
    ["https://evil.example/collect", f"https://{HOST}:8443/", f"https://api.{HOST}/"],
)
def test_the_guard_keeps_the_signature_off_a_followed_redirect(
    send: Callable[..., httpx.Response], location: str
) -> None:
    site = Site(location)
    response = send(site, VolcengineAuth(STS), follow_redirects=True, guard=True)
    assert response.json() == {"elsewhere": True}
    assert [_carries(request) for request in site.elsewhere()] == [[]]


def test_a_redirect_on_the_same_origin_keeps_its_headers(
    send: Callable[..., httpx.Response],
) -> None:
    site = Site("/elsewhere")
    response = send(site, VolcengineAuth(STS), follow_redirects=True, guard=True)
    assert response.status_code == 200
    assert _carries(site.elsewhere()[0]) == list(SIGNATURE_HEADERS)


# --- no secret shown ---------------------------------------------------------------------------


def test_no_secret_in_repr() -> None:
    auth = VolcengineAuth(STS)
    text = repr(auth)
    assert SECRET not in text
    assert TOKEN not in text
    assert text == (
        "VolcengineAuth(Credentials(access_key_id='AKLTstsAccessKey', "
        "secret_access_key='***', session_token='***'), region='cn-north-1', "
        "service='rtc', host='rtc.volcengineapi.com')"
    )
    assert repr(VolcengineAuth(STS, any_host=True)).endswith("any_host=True)")


def test_no_secret_in_the_errors() -> None:
    auth = VolcengineAuth(STS)
    with pytest.raises(ValueError, match="signs requests to") as refused:
        signed(auth, httpx.Request("GET", "https://evil.example/"))
    site = Site("https://evil.example/")
    with (
        pytest.raises(UnsafeRedirectError) as reported,
        httpx.Client(
            auth=auth, transport=httpx.MockTransport(site), follow_redirects=True
        ) as client,
    ):
        client.get(f"{BASE_URL}/")
    for error in (refused.value, reported.value):
        assert SECRET not in str(error)
        assert TOKEN not in str(error)


def test_json_bodies_from_httpx_are_signed_as_sent() -> None:
    auth = VolcengineAuth(STS, clock=fixed_clock())
    body = {"AppId": "app", "RoomId": "房间一"}
    request = signed(auth, httpx.Request("POST", f"{BASE_URL}/", json=body))
    assert json.loads(request.content) == body
    assert verify(request, STS, now=NOW)


# --- the docs page's example -------------------------------------------------------------------


def test_the_docs_example_runs_and_its_requests_are_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = DOCS_PAGE.read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    printed = re.search(r"\nprints\n\n```text\n(.*?)```", text, re.S)
    assert printed is not None
    # The emulator answers an action it does not serve before it looks at the signature, so
    # every request the example sends is also put through the emulator's verifier here.
    seen: list[httpx.Request] = []

    class RecordingEmulator(Emulator):
        def transport(self) -> Any:
            inner = super().transport()

            async def deliver(request: httpx.Request) -> httpx.Response:
                seen.append(request)
                return await inner.handle_async_request(request)

            return httpx.MockTransport(deliver)

    monkeypatch.setattr(rtc_segment.testing, "Emulator", RecordingEmulator)
    script = tmp_path / "auth_example.py"
    script.write_text(code, encoding="utf-8")
    runpy.run_path(str(script), run_name="__main__")
    assert capsys.readouterr().out == printed.group(1)
    assert [request.method for request in seen] == ["GET", "POST"]
    for request in seen:
        assert verify(request, DEFAULT_CREDENTIALS, now=datetime.now(UTC))
