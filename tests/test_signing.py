"""Tests for rtc_segment._signing: shared vectors, the official SDK as oracle, server helpers."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc_segment._credentials import Credentials
from rtc_segment._signing import (
    EMPTY_BODY_SHA256,
    ParsedAuthorization,
    Signer,
    canonical_query,
    canonical_request_for,
    format_x_date,
    parse_authorization,
    quote,
    sign,
    signature,
    signing_key,
    string_to_sign,
)

VECTORS_PATH = Path(__file__).parents[2] / "shared" / "signing-vectors.json"
UTC = timezone.utc
NOW = datetime(2024, 3, 5, 7, 8, 9, tzinfo=UTC)
AK = "AKLTtestAccessKeyId"
SK = "dGVzdC1zZWNyZXQtbmV2ZXItaW4tcmVwcg=="
TOKEN = "STS.token-never-in-repr"
QUERY = {
    "Action": "GetSegmentTask",
    "Version": "2022-06-01",
    "AppId": "661e0000543cf",
    "RoomId": "Room1",
    "TaskId": "Task1",
}


def _signer_can_send(vector: dict[str, Any]) -> bool:
    """Signer sends only Host (always) and Content-Type; other header sets are sign()'s job."""
    given_ = vector["input"]
    headers = set(given_["headers"])
    return (
        given_["method"] in ("GET", "POST")
        and "Host" in headers
        and headers <= {"Host", "Content-Type"}
    )


def _load_vectors(*, for_signer: bool = False) -> list[Any]:
    if not VECTORS_PATH.is_file():
        # One failing case rather than an empty (silently passing) parametrisation.
        return [pytest.param(None, id="signing-vectors-missing")]
    vectors = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))["vectors"]
    if for_signer:
        vectors = [vector for vector in vectors if _signer_can_send(vector)]
    return [pytest.param(vector, id=vector["name"]) for vector in vectors]


def _vector_now(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _require(vector: dict[str, Any] | None) -> dict[str, Any]:
    if vector is None:
        pytest.fail(
            f"signing vectors not found at {VECTORS_PATH}; the repository expects shared/ "
            "(with signing-vectors.json) beside its checkout"
        )
    return vector


def _check_against_vector(
    signed: Any, expected: dict[str, Any], given_headers: Mapping[str, str]
) -> None:
    assert signed.canonical_request == expected["canonical_request"]
    assert signed.string_to_sign == expected["string_to_sign"]
    assert signed.signature == expected["signature"]
    assert signed.authorization == expected["authorization"]
    assert signed.x_date == expected["x_date"]
    assert signed.content_sha256 == expected["x_content_sha256"]
    assert signed.signed_headers == expected["signed_headers"]
    assert signed.headers["Authorization"] == expected["authorization"]
    assert signed.headers["X-Date"] == expected["x_date"]
    assert signed.headers["X-Content-Sha256"] == expected["x_content_sha256"]
    assert signed.headers.get("X-Security-Token") == expected["x_security_token"]
    added = None if "Content-Type" in given_headers else signed.headers.get("Content-Type")
    assert added == expected["content_type_added"]


@pytest.mark.parametrize("vector", _load_vectors())
def test_sign_matches_vector(vector: dict[str, Any] | None) -> None:
    vector = _require(vector)
    given_ = vector["input"]
    signed = sign(
        method=given_["method"],
        path=given_["path"],
        query=given_["query"],
        headers=given_["headers"],
        body=given_["body"],
        credentials=Credentials(
            given_["access_key_id"], given_["secret_access_key"], given_["session_token"]
        ),
        region=given_["region"],
        service=given_["service"],
        now=_vector_now(given_["datetime"]),
    )
    _check_against_vector(signed, vector["output"], given_["headers"])
    # Every given header is sent unchanged, signed or not.
    for name, value in given_["headers"].items():
        assert signed.headers[name] == value


@pytest.mark.parametrize("vector", _load_vectors(for_signer=True))
def test_signer_matches_vector(vector: dict[str, Any] | None) -> None:
    vector = _require(vector)
    given_ = vector["input"]
    headers = given_["headers"]
    signer = Signer(
        Credentials(given_["access_key_id"], given_["secret_access_key"], given_["session_token"]),
        region=given_["region"],
        service=given_["service"],
    )
    signed = signer.sign(
        method=given_["method"],
        host=headers["Host"],
        path=given_["path"],
        query=given_["query"],
        body=given_["body"].encode(),
        content_type=headers.get("Content-Type"),
        now=_vector_now(given_["datetime"]),
    )
    _check_against_vector(signed, vector["output"], headers)


# --- the official SDK as the oracle ------------------------------------------------------------

RESERVED = " &=+%~*/:@!'()?#[];,$\"<>\\^`{|}"
text_with_reserved = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(RESERVED)), max_size=12
)
query_values = st.one_of(text_with_reserved, st.lists(text_with_reserved, max_size=3))
queries = st.dictionaries(text_with_reserved, query_values, max_size=6)
datetimes = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=8)), timezone(-timedelta(hours=5, minutes=30))]
    ),
)
hosts = st.sampled_from(
    ["rtc.volcengineapi.com", "rtc.volcengineapi.com:443", "example.com:80", "127.0.0.1:8080"]
)
# Credentials accept printable ASCII without whitespace (what real keys and tokens are).
_KEY_CHARS = "".join(map(chr, range(0x21, 0x7F)))
secrets = st.text(_KEY_CHARS, min_size=1, max_size=40)
tokens = st.one_of(st.just(""), st.text(_KEY_CHARS, min_size=1, max_size=40))
access_keys = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=24)


def sdk_sign(
    *,
    method: str,
    path: str,
    query: Mapping[str, str | Sequence[str]],
    headers: Mapping[str, str],
    body: bytes | str,
    ak: str,
    sk: str,
    token: str,
    region: str,
    service: str,
    now: datetime,
) -> dict[str, str]:
    """Headers after ``volcengine``'s own SignerV4.sign, its clock pinned to ``now``."""
    from volcengine.auth.SignerV4 import SignerV4
    from volcengine.base.Request import Request
    from volcengine.Credentials import Credentials as SdkCredentials

    request = Request()
    request.set_method(method)
    request.set_path(path)
    request.set_query({key: list(v) if not isinstance(v, str) else v for key, v in query.items()})
    request.set_headers(dict(headers))
    request.set_body(body)
    x_date = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SignerV4, "get_current_format_date", staticmethod(lambda: x_date))
        SignerV4.sign(request, SdkCredentials(ak, sk, service, region, token))
    return dict(request.headers)


@settings(max_examples=300, deadline=None)
@given(
    query=queries,
    method=st.sampled_from(["GET", "POST"]),
    body=st.one_of(st.binary(max_size=64), st.text(max_size=64)),
    content_type=st.sampled_from([None, "application/json"]),
    host=hosts,
    ak=access_keys,
    sk=secrets,
    token=tokens,
    now=datetimes,
    region=st.sampled_from(["cn-north-1", "ap-southeast-1"]),
)
def test_same_headers_as_the_official_sdk(
    query: dict[str, str | list[str]],
    method: str,
    body: bytes | str,
    content_type: str | None,
    host: str,
    ak: str,
    sk: str,
    token: str,
    now: datetime,
    region: str,
) -> None:
    pytest.importorskip("volcengine", reason="the official SDK is a test dependency")
    headers = {"Host": host}
    if content_type is not None:
        headers["Content-Type"] = content_type
    expected = sdk_sign(
        method=method,
        path="/",
        query=query,
        headers=headers,
        body=body,
        ak=ak,
        sk=sk,
        token=token,
        region=region,
        service="rtc",
        now=now,
    )
    credentials = Credentials(ak, sk, token)
    ours = sign(
        method=method,
        path="/",
        query=query,
        headers=headers,
        body=body,
        credentials=credentials,
        region=region,
        service="rtc",
        now=now,
    )
    assert ours.headers["Authorization"] == expected["Authorization"]
    assert ours.headers["X-Content-Sha256"] == expected["X-Content-Sha256"]
    assert ours.headers == expected

    fast = Signer(credentials, region=region).sign(
        method=method,
        host=host,
        query=query,
        body=body.encode() if isinstance(body, str) else body,
        content_type=content_type,
        now=now,
    )
    assert fast.headers == expected
    assert fast.query_string == ours.query_string


# --- the query on the wire ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(query=queries)
def test_query_on_the_wire_is_the_canonical_query(query: dict[str, str | list[str]]) -> None:
    signed = Signer(Credentials(AK, SK), region="cn-north-1").sign(
        method="GET", host="rtc.volcengineapi.com", query=query, now=NOW
    )
    url = httpx.URL(f"https://rtc.volcengineapi.com/?{signed.query_string}")
    # httpx sends the query bytes untouched ...
    assert url.query.decode("ascii") == signed.query_string
    assert httpx.Request("GET", url).url.raw_path == f"/?{signed.query_string}".encode()
    # ... and a server decoding them gets the caller's pairs back (sorted by key, stable).
    pairs = [
        (k, v)
        for k, values in query.items()
        for v in ([values] if isinstance(values, str) else values)
    ]
    assert url.params.multi_items() == sorted(pairs, key=lambda pair: pair[0])
    assert canonical_query(url.params.multi_items()) == signed.query_string


def test_canonical_query_sorts_by_raw_key_and_keeps_repeated_key_order() -> None:
    pairs = [("b", "2"), ("a", "z"), ("B", "1"), ("a", "y"), ("a", "x")]
    assert canonical_query(pairs) == "B=1&a=z&a=y&a=x&b=2"
    assert canonical_query({"a": ("z", "y"), "B": "1"}) == "B=1&a=z&a=y"
    assert canonical_query({}) == ""
    assert canonical_query({"k": []}) == ""


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("Room1", "Room1"),
        ("a b", "a%20b"),
        ("~-_.", "~-_."),
        ("*+/=&%", "%2A%2B%2F%3D%26%25"),
        ("房", "%E6%88%BF"),
        ("🎧", "%F0%9F%8E%A7"),
        ("", ""),
    ],
)
def test_quote(raw: str, encoded: str) -> None:
    assert quote(raw) == encoded


# --- time --------------------------------------------------------------------------------------


def test_format_x_date_converts_to_utc() -> None:
    beijing = datetime(2024, 1, 1, 7, 30, 5, 999_999, tzinfo=timezone(timedelta(hours=8)))
    assert format_x_date(beijing) == "20231231T233005Z"
    assert format_x_date(NOW) == "20240305T070809Z"


@given(st.datetimes(timezones=st.just(UTC)))
def test_format_x_date_agrees_with_strftime(now: datetime) -> None:
    assert format_x_date(now) == now.strftime("%Y%m%dT%H%M%SZ")


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_x_date(datetime(2024, 3, 5))
    with pytest.raises(ValueError, match="timezone-aware"):
        Signer(Credentials(AK, SK), region="cn-north-1").sign(
            method="GET", host="h", query={}, now=datetime(2024, 3, 5)
        )


# --- signing key -------------------------------------------------------------------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def test_signing_key_derivation() -> None:
    expected = _hmac(_hmac(_hmac(_hmac(SK.encode(), "20240305"), "cn-north-1"), "rtc"), "request")
    assert signing_key(SK, "20240305", "cn-north-1", "rtc") == expected


def test_signer_derives_the_key_once_per_day() -> None:
    signing_key.cache_clear()
    signer = Signer(Credentials(AK, SK), region="cn-north-1")
    for second in range(5):
        signer.sign(method="GET", host="h", query=QUERY, now=NOW + timedelta(seconds=second))
    assert signing_key.cache_info().misses == 1

    # sign() shares the cache: same day, region and service -> no new derivation.
    sign(
        method="GET", path="/", query=QUERY, headers={"Host": "h"}, body=b"",
        credentials=Credentials(AK, SK), region="cn-north-1", service="rtc", now=NOW,
    )  # fmt: skip
    assert signing_key.cache_info().misses == 1
    assert signing_key.cache_info().hits >= 1


def test_signer_switches_key_at_midnight_utc() -> None:
    credentials = Credentials(AK, SK)
    signer = Signer(credentials, region="cn-north-1")
    before = datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC)
    for now in (before, before + timedelta(seconds=1), before):
        fast = signer.sign(method="GET", host="h", query=QUERY, now=now)
        reference = sign(
            method="GET", path="/", query=QUERY, headers={"Host": "h"}, body=b"",
            credentials=credentials, region="cn-north-1", service="rtc", now=now,
        )  # fmt: skip
        assert fast.authorization == reference.authorization
        assert f"/{now:%Y%m%d}/cn-north-1/rtc/request" in fast.authorization


# --- server side -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "host", "body", "token"),
    [
        ("GET", "rtc.volcengineapi.com", b"", None),
        ("GET", "rtc.volcengineapi.com:443", b"", TOKEN),
        ("POST", "127.0.0.1:8080", b'{"AppId":"a"}', None),
    ],
)
def test_server_recomputes_the_clients_canonical_request(
    method: str, host: str, body: bytes, token: str | None
) -> None:
    credentials = Credentials(AK, SK, token)
    query = {**QUERY, "RoomId": "room 1&2", "Tag": ["b", "a"]}
    signed = Signer(credentials, region="cn-north-1").sign(
        method=method, host=host, query=query, body=body, now=NOW
    )
    # What a server sees: an httpx request, headers case-insensitive, query decoded.
    request = httpx.Request(
        method, f"http://{host}/?{signed.query_string}", headers=signed.headers, content=body
    )
    parsed = parse_authorization(request.headers["authorization"])
    assert parsed.access_key_id == AK
    assert parsed.credential_scope == "20240305/cn-north-1/rtc/request"

    canonical = canonical_request_for(
        method=request.method,
        path=request.url.path,
        query_pairs=request.url.params.multi_items(),
        signed_headers=parsed.signed_headers,
        header_lookup=request.headers.get,
        content_sha256=hashlib.sha256(request.content).hexdigest(),
    )
    assert canonical == signed.canonical_request
    key = signing_key(SK, parsed.date, parsed.region, parsed.service)
    to_sign = string_to_sign(request.headers["x-date"], parsed.credential_scope, canonical)
    assert to_sign == signed.string_to_sign
    assert signature(key, to_sign) == parsed.signature


def test_server_detects_a_tampered_query() -> None:
    signed = Signer(Credentials(AK, SK), region="cn-north-1").sign(
        method="GET", host="h", query=QUERY, now=NOW
    )
    parsed = parse_authorization(signed.authorization)
    canonical = canonical_request_for(
        method="GET",
        path="/",
        query_pairs=[*QUERY.items(), ("TaskId", "other")],
        signed_headers=parsed.signed_headers,
        header_lookup={k.lower(): v for k, v in signed.headers.items()}.get,
        content_sha256=EMPTY_BODY_SHA256,
    )
    to_sign = string_to_sign(signed.x_date, parsed.credential_scope, canonical)
    key = signing_key(SK, parsed.date, parsed.region, parsed.service)
    assert signature(key, to_sign) != parsed.signature


def test_missing_signed_header_is_reported() -> None:
    with pytest.raises(ValueError, match="x-date"):
        canonical_request_for(
            method="GET",
            path="/",
            query_pairs=[],
            signed_headers=("host", "x-date"),
            header_lookup={"host": "h"}.get,
            content_sha256=EMPTY_BODY_SHA256,
        )


def test_parse_authorization() -> None:
    sig = "0123456789abcdef" * 4
    parsed = parse_authorization(
        f"HMAC-SHA256 Credential={AK}/20240305/cn-north-1/rtc/request, "
        f"SignedHeaders=host;x-content-sha256;x-date, Signature={sig}"
    )
    assert parsed == ParsedAuthorization(
        access_key_id=AK,
        date="20240305",
        region="cn-north-1",
        service="rtc",
        terminator="request",
        signed_headers=("host", "x-content-sha256", "x-date"),
        signature=sig,
    )


SIG = "a" * 64
GOOD_CREDENTIAL = f"Credential={AK}/20240305/cn-north-1/rtc/request"


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("", "algorithm"),
        (f"AWS4-HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=host, Signature={SIG}", "algorithm"),
        (f"HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=host", "Signature is missing"),
        (f"HMAC-SHA256 {GOOD_CREDENTIAL}, Signature={SIG}", "SignedHeaders is missing"),
        (f"HMAC-SHA256 SignedHeaders=host, Signature={SIG}", "Credential is missing"),
        (f"HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=host, Signature={SIG}, X", "Name=value"),
        (
            f"HMAC-SHA256 {GOOD_CREDENTIAL}, {GOOD_CREDENTIAL}, SignedHeaders=h, Signature={SIG}",
            "more than once",
        ),
        (
            f"HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=h, Signature={SIG}, Extra=1",
            "unexpected",
        ),
        (
            f"HMAC-SHA256 Credential={AK}/20240305/rtc, SignedHeaders=h, Signature={SIG}",
            "AccessKey",
        ),
        (
            f"HMAC-SHA256 Credential={AK}/2024-03-05/cn-north-1/rtc/request, "
            f"SignedHeaders=h, Signature={SIG}",
            "date",
        ),
        (f"HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=host;;x-date, Signature={SIG}", "names"),
        (f"HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=host, Signature={SIG.upper()}", "hex"),
        (f"HMAC-SHA256 {GOOD_CREDENTIAL}, SignedHeaders=host, Signature=abc", "hex"),
    ],
)
def test_parse_authorization_rejects_malformed_values(value: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_authorization(value)


# --- redaction ---------------------------------------------------------------------------------


def test_no_secret_in_any_repr() -> None:
    credentials = Credentials(AK, SK, TOKEN)
    signer = Signer(credentials, region="cn-north-1")
    fast = signer.sign(method="POST", host="h", query=QUERY, body=b"{}", now=NOW)
    slow = sign(
        method="GET", path="/", query=QUERY, headers={"Host": "h"}, body="",
        credentials=credentials, region="cn-north-1", service="rtc", now=NOW,
    )  # fmt: skip
    assert fast.headers["X-Security-Token"] == TOKEN  # it is sent ...
    assert TOKEN in fast.canonical_request  # ... and signed ...
    for thing in (credentials, signer, fast, slow, parse_authorization(fast.authorization)):
        for text in (repr(thing), str(thing)):  # ... but never shown
            assert SK not in text
            assert TOKEN not in text
    assert "'X-Security-Token': '***'" in repr(fast)
