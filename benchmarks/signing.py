"""How long signing one GetSegmentTask request takes: ours against the official SDK.

Run: ``python benchmarks/signing.py`` (or ``--quick`` for a CI smoke run). Prints the median
time per call over several repeats, in microseconds, and the ratio official / ours. Every
signer reads the clock on each call (the official SDK does so internally), so the figures
compare what a caller pays per request. ``VolcengineAuth`` signs a fresh ``httpx.Request`` per
call, as a user's client hands it over; building that request is measured on its own above it,
so the Auth's share is the difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from rtc_segment._auth import VolcengineAuth
from rtc_segment._credentials import Credentials
from rtc_segment._signing import Signer

HOST = "rtc.volcengineapi.com"
REGION = "cn-north-1"
SERVICE = "rtc"
AK = "AKLTbenchmarkAccessKeyId000000000"
SK = "YmVuY2htYXJrLXNlY3JldC1hY2Nlc3Mta2V5"
QUERY = {
    "Action": "GetSegmentTask",
    "Version": "2022-06-01",
    "AppId": "661e0000543cf",
    "RoomId": "Room1",
    "TaskId": "Task1",
}


def ours_signer() -> Callable[[], object]:
    signer = Signer(Credentials(AK, SK), region=REGION, service=SERVICE)

    def call() -> object:
        return signer.sign(method="GET", host=HOST, query=QUERY, now=datetime.now(UTC))

    return call


def ours_sign_headers() -> Callable[[], object]:
    signer = Signer(Credentials(AK, SK), region=REGION, service=SERVICE)
    # The header set the official SDK's Service.get signs with.
    headers = {"Accept": "application/json", "Host": HOST, "User-Agent": "benchmark"}

    def call() -> object:
        return signer.sign_headers(
            method="GET", query=QUERY, headers=headers, now=datetime.now(UTC)
        )

    return call


def httpx_request() -> Callable[[], object]:
    url = f"https://{HOST}/"

    def call() -> object:
        return httpx.Request("GET", url, params=QUERY)

    return call


def ours_auth() -> Callable[[], object]:
    auth = VolcengineAuth(Credentials(AK, SK), region=REGION, service=SERVICE)
    url = f"https://{HOST}/"

    def call() -> object:
        request = httpx.Request("GET", url, params=QUERY)
        return next(auth.sync_auth_flow(request))

    return call


def official() -> Callable[[], object] | None:
    try:
        from volcengine.auth.SignerV4 import SignerV4
        from volcengine.base.Request import Request
        from volcengine.Credentials import Credentials as SdkCredentials
    except ImportError:
        return None
    credentials = SdkCredentials(AK, SK, SERVICE, REGION)

    def call() -> object:
        # As the SDK's Service.get does: a fresh request per call, Host set before signing.
        request = Request()
        request.set_method("GET")
        request.set_path("/")
        request.set_query(dict(QUERY))
        request.set_headers({"Host": HOST})
        SignerV4.sign(request, credentials)
        return request

    return call


def botocore_sigv4() -> Callable[[], object] | None:
    try:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials as BotoCredentials
    except ImportError:
        return None
    auth = SigV4Auth(BotoCredentials(AK, SK), SERVICE, REGION)

    def call() -> object:
        request = AWSRequest(method="GET", url=f"https://{HOST}/", params=QUERY)
        auth.add_auth(request)
        return request

    return call


def measure(call: Callable[[], object], *, calls: int, repeats: int) -> float:
    """Median over ``repeats`` runs of the mean time per call, in microseconds."""
    call()  # warm caches (signing key, quoting) as a long-running client would have them
    runs = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(calls):
            call()
        runs.append((time.perf_counter_ns() - start) / calls / 1000)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CI smoke run")
    args = parser.parse_args(argv)
    calls, repeats = (200, 3) if args.quick else (20_000, 7)

    rows: list[tuple[str, float | None]] = []
    for name, factory in (
        ("ours: Signer.sign", ours_signer),
        ("ours: Signer.sign_headers", ours_sign_headers),
        ("httpx.Request built (for scale)", httpx_request),
        ("ours: VolcengineAuth (build + sign)", ours_auth),
        ("official: volcengine SignerV4.sign", official),
        ("botocore SigV4Auth (AWS, for scale)", botocore_sigv4),
    ):
        call = factory()
        rows.append((name, None if call is None else measure(call, calls=calls, repeats=repeats)))

    fastest = rows[0][1]
    official_us = next(micros for name, micros in rows if name.startswith("official"))
    print(f"signing one GetSegmentTask request: {calls} calls x {repeats} repeats, median")
    print(f"{'signer':<38} {'µs/call':>9} {'official/this':>14}")
    for name, micros in rows:
        if micros is None:
            print(f"{name:<38} {'not installed':>9}")
            continue
        ratio = f"{official_us / micros:.1f}x" if official_us else "-"
        print(f"{name:<38} {micros:>9.2f} {ratio:>14}")
    if official_us and fastest:
        print(f"official / ours (Signer.sign): {official_us / fastest:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
