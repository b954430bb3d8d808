"""Regenerate ``signing-vectors.json`` from the official ``volcengine`` SDK.

Run: ``python tests/data/make_signing_vectors.py`` (writes the file beside this script), or
``--check`` to compare instead (exit status 1 on any difference), or ``--output PATH``.
Needs the SDK at the version below (``pip install volcengine==1.0.229``, part of the ``test``
extra).

Each case's inputs are written out here; everything under ``output`` comes from the SDK:
``SignerV4.sign`` signs a ``volcengine.base.Request`` with its clock pinned to the case's
time, and the canonical request and string to sign are read off the SDK's own hashing calls
(``Util.sha256``, ``Util.hmac_sha256``) while it signs. GET cases are signed a second time
with ``SignerV4.sign_only``, which must agree.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

SDK_VERSION = "1.0.229"
HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "signing-vectors.json"

COMMENT = (
    "Volcengine OpenAPI HMAC-SHA256 (V4) signature test vectors, produced with the official "
    f"'volcengine' Python SDK v{SDK_VERSION} (volcengine.auth.SignerV4.sign with its clock "
    "fixed to input.datetime; GET cases cross-checked with SignerV4.sign_only). "
    "canonical_request and string_to_sign were captured from the SDK's own hashing calls. "
    "Credentials are fake. Query values that are lists are repeated keys. Headers listed in "
    "input.headers are those present before signing; the signer adds X-Date, "
    "X-Content-Sha256, X-Security-Token (when session_token is non-empty) and, for non-GET "
    "without Content-Type, a default Content-Type (output.content_type_added)."
)

HOST = "rtc.volcengineapi.com"
GET_QUERY = {
    "Action": "GetSegmentTask",
    "Version": "2022-06-01",
    "AppId": "661e0000543cf",
    "RoomId": "Room1",
    "TaskId": "Task1",
}
STOP_QUERY = {"Action": "StopSegment", "Version": "2022-06-01"}


def case(name: str, description: str, **given: Any) -> dict[str, Any]:
    """One vector's name, description and inputs (defaults: a plain GetSegmentTask)."""
    host = given.get("host", HOST)
    inputs = {
        "method": "GET",
        "host": host,
        "path": "/",
        "query": GET_QUERY,
        "headers": {"Host": host},
        "body": "",
        "access_key_id": "AKLTexampleAccessKeyId0000000000",
        "secret_access_key": "ZXhhbXBsZVNlY3JldEFjY2Vzc0tleTAwMDAwMDAwMDA=",
        "session_token": "",
        "region": "cn-north-1",
        "service": "rtc",
        "datetime": "2024-03-05T07:08:09Z",
    }
    unknown = set(given) - set(inputs)
    if unknown:
        raise TypeError(f"unknown input {sorted(unknown)}")
    inputs.update(given)
    return {"name": name, "description": description, "input": copy.deepcopy(inputs)}


CASES = [
    case(
        "get_plain_ascii",
        "GetSegmentTask with plain ASCII ids; only Host given as header.",
    ),
    case(
        "get_sdk_default_headers",
        "Headers as the SDK's Service.get sends them: Accept and User-Agent are sent but not "
        "signed.",
        headers={
            "Accept": "application/json",
            "Host": HOST,
            "User-Agent": f"volc-sdk-python/v{SDK_VERSION}",
        },
    ),
    case(
        "get_reserved_chars",
        "Ids with space, &, =, + and %: each percent-encoded, space as %20 (not +).",
        query={**GET_QUERY, "AppId": "app id", "RoomId": "room&1=2", "TaskId": "a+b%20c"},
    ),
    case(
        "get_tilde_star_and_punctuation",
        "'~' stays literal; '*', '!', quote, parentheses, '/', ':' and '@' are encoded.",
        query={**GET_QUERY, "AppId": "app~1", "RoomId": "room*1!'()", "TaskId": "t/1:2@x-y_z.w"},
    ),
    case(
        "get_unicode_ids",
        "Non-ASCII ids (Chinese, Latin-1, a 4-byte emoji) are UTF-8 encoded and "
        "percent-escaped with upper-case hex.",
        query={**GET_QUERY, "RoomId": "房间一", "TaskId": "任务-é🎧"},
    ),
    case(
        "get_empty_values",
        "Empty values keep the '=': 'TaskId=' (and an empty extra parameter).",
        query={**GET_QUERY, "RoomId": "", "TaskId": "", "Extra": ""},
    ),
    case(
        "get_session_token",
        "STS temporary credentials: X-Security-Token header is added and signed.",
        session_token="STS2eyJMVEFjY2Vzc0tleUlkIjoiQUtMVGV4YW1wbGUifQ==",
    ),
    case(
        "get_key_order_and_repeated_key",
        "Keys are sorted by their raw (unescaped) text in code-point order, so upper-case keys "
        "come before lower-case ones; a list value is emitted once per element in the given "
        "order (not sorted by value, unlike AWS SigV4).",
        query={
            "Version": "2022-06-01",
            "TaskId": "Task1",
            "Action": "GetSegmentTask",
            "RoomId": "Room1",
            "AppId": "661e0000543cf",
            "Tag": ["b", "a", "a c"],
            "lower": "x",
        },
    ),
    case(
        "get_host_default_port_stripped",
        "Host 'rtc.volcengineapi.com:443' is signed as 'rtc.volcengineapi.com' (ports 80/443 "
        "dropped).",
        headers={"Host": f"{HOST}:443"},
    ),
    case(
        "get_loopback_host_with_port",
        "Any other port is kept in the signed host value (e.g. a local emulator).",
        headers={"Host": "127.0.0.1:8080"},
    ),
    case(
        "get_header_name_case",
        "Only headers named exactly 'Host', 'Content-Type', 'Content-Md5' or starting with "
        "'X-' (case-sensitive) are signed: 'X-Custom' is signed, 'x-lower' and 'content-type' "
        "are not.",
        headers={
            "Host": HOST,
            "X-Custom": "  padded  value ",
            "x-lower": "ignored",
            "content-type": "ignored",
        },
    ),
    case(
        "get_date_boundary_overseas_endpoint",
        "Last second of a UTC day against the overseas endpoint with region ap-southeast-1: "
        "the scope date is the UTC date of X-Date.",
        host="open-ap-singapore-1.volcengineapi.com",
        region="ap-southeast-1",
        datetime="2024-12-31T23:59:59Z",
    ),
    case(
        "get_content_md5",
        "'Content-Md5' (exact spelling) is signed like Content-Type and Host.",
        headers={"Host": HOST, "Content-Md5": "1B2M2Y8AsgTpgAXAEEHJeg=="},
    ),
    case(
        "get_without_host_last_header_has_port",
        "No Host header at all: nothing gets the host rule, so a later signed header whose "
        "value looks like 'name:443' keeps its port.",
        headers={"X-Zeta": "example.com:443"},
    ),
    case(
        "post_json_body",
        "POST with a JSON body (as Service.json sends StartSegment/StopSegment).",
        method="POST",
        query=STOP_QUERY,
        headers={"Host": HOST, "Content-Type": "application/json"},
        body=json.dumps(
            {"AppId": "661e0000543cf", "BusinessId": "B1", "RoomId": "房间一", "TaskId": "Task1"},
            ensure_ascii=False,
            separators=(",", ":"),
        ),
    ),
    case(
        "post_empty_body_default_content_type",
        "Non-GET request without Content-Type: SignerV4.sign adds "
        "'application/x-www-form-urlencoded; charset=utf-8' and signs it.",
        method="POST",
        query=STOP_QUERY,
    ),
]


# HMAC-SHA256 keys around SHA-256's 64-byte block: a longer key is hashed first, a key of
# exactly 64 bytes is not. (Derived signing keys are 32 bytes; these check signature().)
HMAC_KEY_LENGTHS = (32, 63, 64, 65)
HMAC_MESSAGE = "HMAC-SHA256\n20240305T070809Z\n20240305/cn-north-1/rtc/request\nabc"


def hmac_vectors() -> list[dict[str, str]]:
    """``signature(key, message)`` cases, computed by the SDK's ``Util.hmac_sha256``."""
    from volcengine.util.Util import Util

    cases = []
    for length in HMAC_KEY_LENGTHS:
        key = bytes((7 * i + 1) % 256 for i in range(length))
        digest = Util.hmac_sha256(key, HMAC_MESSAGE).hex()
        cases.append({"key_hex": key.hex(), "message": HMAC_MESSAGE, "signature": digest})
    return cases


@contextmanager
def _recording_sdk(x_date: str) -> Iterator[dict[str, list[Any]]]:
    """The SDK with its clock pinned to ``x_date`` and its hashing calls recorded."""
    from volcengine.auth.SignerV4 import SignerV4
    from volcengine.util.Util import Util

    calls: dict[str, list[Any]] = {"sha256": [], "hmac_sha256": []}
    originals = {
        "sha256": Util.__dict__["sha256"],
        "hmac_sha256": Util.__dict__["hmac_sha256"],
        "clock": SignerV4.__dict__["get_current_format_date"],
    }
    sha256 = originals["sha256"].__func__
    hmac_sha256 = originals["hmac_sha256"].__func__

    def recorded_sha256(content: Any) -> Any:
        calls["sha256"].append(content)
        return sha256(content)

    def recorded_hmac_sha256(key: bytes, content: str) -> Any:
        calls["hmac_sha256"].append(content)
        return hmac_sha256(key, content)

    Util.sha256 = staticmethod(recorded_sha256)
    Util.hmac_sha256 = staticmethod(recorded_hmac_sha256)
    SignerV4.get_current_format_date = staticmethod(lambda: x_date)
    try:
        yield calls
    finally:
        Util.sha256 = originals["sha256"]
        Util.hmac_sha256 = originals["hmac_sha256"]
        SignerV4.get_current_format_date = originals["clock"]


def _time(given: dict[str, Any]) -> datetime:
    return datetime.strptime(given["datetime"], "%Y-%m-%dT%H:%M:%SZ")


def sign_with_sdk(given: dict[str, Any]) -> dict[str, Any]:
    """The ``output`` block of one vector, computed by the SDK."""
    from volcengine.auth.SignerV4 import SignerV4
    from volcengine.base.Request import Request
    from volcengine.Credentials import Credentials

    request = Request()
    request.set_method(given["method"])
    request.set_host(given["host"])
    request.set_path(given["path"])
    request.set_query(copy.deepcopy(given["query"]))
    request.set_headers(dict(given["headers"]))
    request.set_body(given["body"])
    credentials = Credentials(
        given["access_key_id"],
        given["secret_access_key"],
        given["service"],
        given["region"],
        given["session_token"],
    )
    x_date = _time(given).strftime("%Y%m%dT%H%M%SZ")
    with _recording_sdk(x_date) as calls:
        SignerV4.sign(request, credentials)
    headers = request.headers
    authorization = headers["Authorization"]
    signed_headers = authorization.split("SignedHeaders=")[1].split(",")[0]
    output = {
        "x_date": headers["X-Date"],
        "x_content_sha256": headers["X-Content-Sha256"],
        "x_security_token": headers.get("X-Security-Token"),
        "content_type_added": (
            None if "Content-Type" in given["headers"] else headers.get("Content-Type")
        ),
        "signed_headers": signed_headers,
        # The SDK hashes the body, then the canonical request; its last HMAC is the signature.
        "canonical_request": calls["sha256"][-1],
        "string_to_sign": calls["hmac_sha256"][-1],
        "signature": authorization.rsplit("Signature=", 1)[1],
        "authorization": authorization,
    }
    if given["method"] == "GET":
        _cross_check(given, credentials, output)
    return output


def _cross_check(given: dict[str, Any], credentials: Any, output: dict[str, Any]) -> None:
    from volcengine.auth.SignerV4 import SignerV4
    from volcengine.auth.SignParam import SignParam

    param = SignParam()
    param.set_method(given["method"])
    param.set_host(given["host"])
    param.set_path(given["path"])
    param.set_query(copy.deepcopy(given["query"]))
    param.set_header_list(dict(given["headers"]))
    param.set_body(given["body"])
    param.set_date(_time(given))
    result = SignerV4.sign_only(param, credentials)
    if result.authorization != output["authorization"]:
        raise AssertionError(f"SignerV4.sign_only disagrees with SignerV4.sign for {given}")


def build() -> dict[str, Any]:
    """The whole document, as written to ``signing-vectors.json``."""
    from importlib.metadata import version

    installed = version("volcengine")
    if installed != SDK_VERSION:
        raise SystemExit(f"needs volcengine=={SDK_VERSION}, found {installed}")
    vectors = [{**item, "output": sign_with_sdk(item["input"])} for item in CASES]
    return {
        "comment": COMMENT,
        "sdk": {"package": "volcengine", "version": f"v{SDK_VERSION}"},
        "vectors": vectors,
        "hmac_vectors": hmac_vectors(),
    }


def render(document: dict[str, Any]) -> str:
    """The file's text: two-space indent, non-ASCII kept as is, a final newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or ``--check``) the vectors file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = render(build())
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} differs from what the SDK produces", file=sys.stderr)
            return 1
        print(f"{args.output}: {len(CASES)} vectors, identical to what the SDK produces")
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {len(CASES)} vectors to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
