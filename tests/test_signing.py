"""Tests for rtc_segment._signing: vendored vectors, the official SDK as oracle, server helpers."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
from datetime import UTC, datetime, timedelta, timezone
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from _local_zone import local_zone
from _signing_support import (
    DATA,
    HMAC_VECTORS,
    VECTORS,
    VECTORS_PATH,
    SdkCase,
    check_against_vector,
    queries,
    sdk_cases,
    vector_credentials,
    vector_now,
    vector_params,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc_segment._credentials import Credentials
from rtc_segment._signing import (
    EMPTY_BODY_SHA256,
    SignedRequest,
    Signer,
    canonical_path,
    canonical_query,
    check_scope,
    format_x_date,
    parse_x_date,
    quote,
    signature,
    signing_key,
    string_to_sign,
)
from rtc_segment._signing import (
    canonical_request as canonical_request_of,
)
from rtc_segment.testing._auth import (
    ParsedAuthorization,
    canonical_request_for,
    parse_authorization,
)

UTC = UTC
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
    """Signer.sign sends only Host (always) and Content-Type; other sets are sign_headers'."""
    given_ = vector["input"]
    headers = set(given_["headers"])
    return (
        given_["method"] in ("GET", "POST")
        and "Host" in headers
        and headers <= {"Host", "Content-Type"}
    )


def _load_generator() -> ModuleType:
    path = DATA / "make_signing_vectors.py"
    spec = importlib.util.spec_from_file_location("make_signing_vectors", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_against_vector(
    signed: SignedRequest, expected: dict[str, Any], given_headers: dict[str, str]
) -> None:
    assert signed.canonical_request == expected["canonical_request"]
    assert signed.string_to_sign == expected["string_to_sign"]
    assert signed.signature == expected["signature"]
    assert signed.authorization == expected["authorization"]
    assert signed.x_date == expected["x_date"]
    assert signed.content_sha256 == expected["x_content_sha256"]
    assert signed.signed_headers == expected["signed_headers"]
    check_against_vector(signed.headers, expected, given_headers)


def test_every_vector_is_covered() -> None:
    # 16 vectors, every one through sign_headers and the fast path where it can send them.
    assert len(VECTORS) == 16
    assert len([vector for vector in VECTORS if _signer_can_send(vector)]) == 12


def test_vendored_vectors_regenerate_from_the_official_sdk() -> None:
    pytest.importorskip("volcengine", reason="the official SDK is a test dependency")
    generator = _load_generator()
    assert generator.render(generator.build()) == VECTORS_PATH.read_text(encoding="utf-8")


@pytest.mark.parametrize("vector", vector_params(VECTORS))
def test_sign_headers_matches_vector(vector: dict[str, Any]) -> None:
    given_ = vector["input"]
    signer = Signer(vector_credentials(given_), region=given_["region"], service=given_["service"])
    # An empty body is left to the default: the vectors are the default's cases too.
    body = {"body": given_["body"]} if given_["body"] else {}
    signed = signer.sign_headers(
        method=given_["method"],
        path=given_["path"],
        query=given_["query"],
        headers=given_["headers"],
        now=vector_now(given_),
        **body,
    )
    _check_against_vector(signed, vector["output"], given_["headers"])
    # Every given header is sent unchanged, signed or not.
    for name, value in given_["headers"].items():
        assert signed.headers[name] == value


@pytest.mark.parametrize("vector", vector_params([v for v in VECTORS if _signer_can_send(v)]))
def test_signer_matches_vector(vector: dict[str, Any]) -> None:
    given_ = vector["input"]
    headers = given_["headers"]
    signer = Signer(vector_credentials(given_), region=given_["region"], service=given_["service"])
    body = {"body": given_["body"].encode()} if given_["body"] else {}  # else the default
    signed = signer.sign(
        method=given_["method"],
        host=headers["Host"],
        path=given_["path"],
        query=given_["query"],
        content_type=headers.get("Content-Type"),
        now=vector_now(given_),
        **body,
    )
    _check_against_vector(signed, vector["output"], headers)


# --- the official SDK as the oracle ------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(case=sdk_cases)
def test_same_headers_as_the_official_sdk(case: SdkCase) -> None:
    expected = case.sdk_headers()
    signer = Signer(Credentials(case.ak, case.sk, case.token), region=case.region)
    general = signer.sign_headers(
        method=case.method, query=case.query, headers=case.headers, body=case.body, now=case.now
    )
    assert general.headers["Authorization"] == expected["Authorization"]
    assert general.headers["X-Content-Sha256"] == expected["X-Content-Sha256"]
    assert general.headers == expected

    fast = signer.sign(
        method=case.method,
        host=case.host,
        query=case.query,
        body=case.body_bytes,
        content_type=case.content_type,
        now=case.now,
    )
    assert fast.headers == expected
    assert fast.query_string == general.query_string


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


@pytest.mark.parametrize(
    ("path", "encoded"),
    [
        ("", "/"),
        ("/", "/"),
        ("/a b/c", "/a%20b/c"),
        ("/~x:y@z", "/~x%3Ay%40z"),
        ("/房", "/%E6%88%BF"),
    ],
)
def test_canonical_path(path: str, encoded: str) -> None:
    assert canonical_path(path) == encoded


def test_path_in_the_canonical_request_is_encoded() -> None:
    signed = Signer(Credentials(AK, SK), region="cn-north-1").sign(
        method="GET", host="h", path="/a b", query={}, now=NOW
    )
    assert signed.canonical_request.split("\n")[1] == "/a%20b"


# --- which headers are signed ------------------------------------------------------------------


def test_names_that_lower_case_alike_resolve_as_in_the_sdk() -> None:
    # The SDK's dict keeps both; the later one's value is signed under the shared name.
    signed = Signer(Credentials(AK, SK), region="cn-north-1").sign_headers(
        method="GET", query={}, headers={"Host": "h", "X-A": "1", "X-a": "2"}, now=NOW
    )
    assert "x-a:2\n" in signed.canonical_request
    assert signed.signed_headers == "host;x-a;x-content-sha256;x-date"


def test_a_percent_in_a_header_name_is_signed_verbatim() -> None:
    # "%" is legal in a header name and must not disturb the cached %-template.
    signed = Signer(Credentials(AK, SK), region="cn-north-1").sign_headers(
        method="GET", query={}, headers={"Host": "h", "X-%s%d": "v%s"}, now=NOW
    )
    assert "x-%s%d:v%s\n" in signed.canonical_request
    assert "SignedHeaders=host;x-%s%d;x-content-sha256;x-date," in signed.authorization


def test_region_and_service_are_checked() -> None:
    credentials = Credentials(AK, SK)
    for region in ("", "cn north", "cn-north-1\r\nX: y", 5):
        with pytest.raises(ValueError, match="region"):
            Signer(credentials, region=region)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="service"):
        Signer(credentials, region="cn-north-1", service="rtc/x")
    with pytest.raises(ValueError, match="service"):
        check_scope("cn-north-1", "")
    check_scope("ap-southeast-1", "ml_maas")  # a service name with an underscore


# --- time --------------------------------------------------------------------------------------


def test_format_x_date_converts_to_utc() -> None:
    beijing = datetime(2024, 1, 1, 7, 30, 5, 999_999, tzinfo=timezone(timedelta(hours=8)))
    assert format_x_date(beijing) == "20231231T233005Z"
    assert format_x_date(NOW) == "20240305T070809Z"


@given(st.datetimes(timezones=st.just(UTC)))
def test_format_x_date_agrees_with_strftime(now: datetime) -> None:
    assert format_x_date(now) == now.strftime("%Y%m%dT%H%M%SZ")


@given(st.datetimes(min_value=datetime(1000, 1, 1), timezones=st.just(UTC)))
def test_parse_x_date_inverts_format_x_date(now: datetime) -> None:
    assert parse_x_date(format_x_date(now)) == now.replace(microsecond=0)


@pytest.mark.parametrize(
    "value", ["", "20240305T070809", "2024-03-05T07:08:09Z", "20241305T070809Z"]
)
def test_parse_x_date_rejects_malformed_values(value: str) -> None:
    assert parse_x_date(value) is None


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


@given(key=st.binary(max_size=200), message=st.text(max_size=200))
def test_signature_is_hmac_sha256(key: bytes, message: str) -> None:
    # Keys longer than SHA-256's 64-byte block are hashed first, as HMAC specifies.
    expected = hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
    assert signature(key, message) == expected


def test_signer_derives_the_key_once_per_day() -> None:
    signing_key.cache_clear()
    signer = Signer(Credentials(AK, SK), region="cn-north-1")
    for second in range(5):
        signer.sign(method="GET", host="h", query=QUERY, now=NOW + timedelta(seconds=second))
    assert signing_key.cache_info().misses == 1

    # Another signer shares the cache: same day, region and service -> no new derivation.
    Signer(Credentials(AK, SK), region="cn-north-1").sign_headers(
        method="GET", query=QUERY, headers={"Host": "h"}, now=NOW
    )
    assert signing_key.cache_info().misses == 1
    assert signing_key.cache_info().hits >= 1


def test_signer_switches_key_at_midnight_utc() -> None:
    credentials = Credentials(AK, SK)
    signer = Signer(credentials, region="cn-north-1")
    before = datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC)
    for now in (before, before + timedelta(seconds=1), before):
        fast = signer.sign(method="GET", host="h", query=QUERY, now=now)
        # A new signer has no day cached: it derives the key of ``now``'s day.
        reference = Signer(credentials, region="cn-north-1").sign(
            method="GET", host="h", query=QUERY, now=now
        )
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
    general = signer.sign_headers(
        method="GET", query=QUERY, headers={"Host": "h", "X-Security-Token": TOKEN}, now=NOW
    )
    assert fast.headers["X-Security-Token"] == TOKEN  # it is sent ...
    assert TOKEN in fast.canonical_request  # ... and signed ...
    for thing in (credentials, signer, fast, general, parse_authorization(fast.authorization)):
        for text in (repr(thing), str(thing)):  # ... but never shown
            assert SK not in text
            assert TOKEN not in text
    assert "'X-Security-Token': '***'" in repr(fast)
    assert "'X-Security-Token': '***'" in repr(general)


# -- credentials per call (what the client does with a provider) ---------------------------


def test_a_signature_takes_every_part_from_the_credentials_passed_per_call() -> None:
    first = Credentials("AKTPfirst", "first-secret", "first-token")
    second = Credentials("AKTPsecond", "second-secret", "second-token")
    now = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)
    shared = Signer(None, region="cn-north-1")
    args: dict[str, Any] = {"method": "GET", "host": "h", "query": {"A": "b"}, "now": now}
    shared.sign(**args, credentials=first)  # fills the derived-key cache for `first`
    mixed = shared.sign(**args, credentials=second)
    fresh = Signer(second, region="cn-north-1").sign(**args)
    assert mixed.headers == fresh.headers  # key id, token and signature all of `second`
    assert "AKTPsecond/" in mixed.authorization
    assert mixed.headers["X-Security-Token"] == "second-token"


def test_a_signer_without_credentials_needs_them_per_call() -> None:
    now = datetime(2024, 3, 5, tzinfo=UTC)
    with pytest.raises(TypeError, match="pass credentials="):
        Signer(None, region="cn-north-1").sign(method="GET", host="h", query={}, now=now)


# --- what mutation testing found untested (docs/testing.md#mutation-testing) -------------


@pytest.mark.parametrize(
    "vector", [pytest.param(v, id=f"{len(v['key_hex']) // 2}-byte key") for v in HMAC_VECTORS]
)
def test_signature_matches_the_sdks_hmac_around_the_block_size(vector: dict[str, str]) -> None:
    # A 64-byte key is used as it is; only a longer one is hashed first.
    assert signature(bytes.fromhex(vector["key_hex"]), vector["message"]) == vector["signature"]


@pytest.mark.parametrize("local", ["UTC", "Asia/Shanghai", "America/New_York"])
@pytest.mark.parametrize(
    ("now", "x_date"),
    [
        (datetime(2024, 3, 5, 15, 8, 9, tzinfo=ZoneInfo("Asia/Shanghai")), "20240305T070809Z"),
        # the day before in UTC, in New York's daylight saving time, and a fixed offset
        (datetime(2024, 7, 1, 1, 30, tzinfo=ZoneInfo("Asia/Shanghai")), "20240630T173000Z"),
        (datetime(2024, 7, 1, 20, 0, tzinfo=ZoneInfo("America/New_York")), "20240702T000000Z"),
        (datetime(2024, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=-3))), "20240101T030000Z"),
    ],
)
def test_x_date_of_an_aware_non_utc_time_is_its_utc_instant(
    local: str, now: datetime, x_date: str
) -> None:
    with local_zone(local):  # whatever the machine's zone, X-Date is UTC
        assert format_x_date(now) == x_date
        signed = Signer(Credentials(AK, SK), region="cn-north-1").sign(
            method="GET", host="rtc.volcengineapi.com", query={}, now=now
        )
    assert signed.headers["X-Date"] == x_date
    assert f"/{x_date[:8]}/cn-north-1/rtc/request," in signed.authorization


def test_a_naive_time_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match=r"^now must be a timezone-aware datetime$"):
        format_x_date(datetime(2024, 3, 5, 7, 8, 9))


def test_signed_request_repr_hides_only_the_session_token() -> None:
    signed = Signer(Credentials(AK, SK, TOKEN), region="cn-north-1").sign(
        method="GET", host="rtc.volcengineapi.com", query={}, now=NOW
    )
    shown = repr(signed)
    assert TOKEN not in shown
    assert "'Host': 'rtc.volcengineapi.com'" in shown
    assert "'X-Date': '20240305T070809Z'" in shown


def test_the_host_rule_applies_to_the_host_value_only() -> None:
    canonical = canonical_request_of(
        "GET",
        "/",
        "",
        [("host", "example.com:443"), ("x-date", "20240305T070809Z"), ("x-zeta", "b:80")],
        "e3b0",
    )
    assert canonical.split("\n")[3:6] == [
        "host:example.com",
        "x-date:20240305T070809Z",
        "x-zeta:b:80",
    ]


def test_signer_refuses_what_is_not_credentials_naming_its_type() -> None:
    with pytest.raises(TypeError, match=r"^credentials must be Credentials, not tuple$"):
        Signer((AK, SK), region="cn-north-1")  # type: ignore[arg-type]
