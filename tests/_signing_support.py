"""What the signing tests share: the vendored vectors and the official SDK as the oracle."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import strategies as st

from rtc_segment._credentials import Credentials

DATA = Path(__file__).parent / "data"
VECTORS_PATH = DATA / "signing-vectors.json"
#: The vectors made with the official SDK (tests/data/make_signing_vectors.py rebuilds them).
_DOCUMENT = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
VECTORS: list[dict[str, Any]] = _DOCUMENT["vectors"]
#: ``signature(key, message)`` cases around SHA-256's 64-byte block, from the SDK's HMAC.
HMAC_VECTORS: list[dict[str, str]] = _DOCUMENT["hmac_vectors"]
UTC = UTC


def vector_params(vectors: list[dict[str, Any]]) -> list[Any]:
    """``vectors`` as pytest params named after each vector."""
    return [pytest.param(vector, id=vector["name"]) for vector in vectors]


def vector_now(given: dict[str, Any]) -> datetime:
    """A vector's ``input.datetime`` as an aware datetime."""
    return datetime.fromisoformat(given["datetime"].replace("Z", "+00:00"))


def vector_credentials(given: dict[str, Any]) -> Credentials:
    """A vector's credentials."""
    return Credentials(given["access_key_id"], given["secret_access_key"], given["session_token"])


def check_against_vector(
    headers: Mapping[str, str], expected: dict[str, Any], given_headers: Mapping[str, str]
) -> None:
    """The headers a signer added are the ones the SDK added for this vector."""
    assert headers["Authorization"] == expected["authorization"]
    assert headers["X-Date"] == expected["x_date"]
    assert headers["X-Content-Sha256"] == expected["x_content_sha256"]
    assert headers.get("X-Security-Token") == expected["x_security_token"]
    added = None if "Content-Type" in given_headers else headers.get("Content-Type")
    assert added == expected["content_type_added"]


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
methods = st.sampled_from(["GET", "POST"])
bodies = st.one_of(st.binary(max_size=64), st.text(max_size=64))
content_types = st.sampled_from([None, "application/json"])
regions = st.sampled_from(["cn-north-1", "ap-southeast-1"])


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


@attrs.frozen
class SdkCase:
    """One request the property tests sign both ways: ours and the official SDK's."""

    query: dict[str, str | list[str]]
    method: str
    body: bytes | str
    content_type: str | None
    host: str
    ak: str
    sk: str
    token: str
    now: datetime
    region: str

    @property
    def headers(self) -> dict[str, str]:
        """The headers the request is signed with: Host, and Content-Type if any."""
        headers = {"Host": self.host}
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type
        return headers

    @property
    def body_bytes(self) -> bytes:
        return self.body.encode() if isinstance(self.body, str) else self.body

    def sdk_headers(self) -> dict[str, str]:
        """The headers the official SDK signs this request with (service ``rtc``, path /)."""
        pytest.importorskip("volcengine", reason="the official SDK is a test dependency")
        return sdk_sign(
            method=self.method,
            path="/",
            query=self.query,
            headers=self.headers,
            body=self.body,
            ak=self.ak,
            sk=self.sk,
            token=self.token,
            region=self.region,
            service="rtc",
            now=self.now,
        )


sdk_cases = st.builds(
    SdkCase,
    query=queries,
    method=methods,
    body=bodies,
    content_type=content_types,
    host=hosts,
    ak=access_keys,
    sk=secrets,
    token=tokens,
    now=datetimes,
    region=regions,
)
