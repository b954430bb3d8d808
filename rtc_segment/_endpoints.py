"""Where the RTC OpenAPI lives: the documented endpoints and their signing regions."""

from __future__ import annotations

__all__ = ["DEFAULT_ENDPOINT", "RTC_HOSTS", "SINGAPORE_ENDPOINT"]

#: The mainland-China endpoint (signing region ``cn-north-1``).
DEFAULT_ENDPOINT = "https://rtc.volcengineapi.com"
#: The overseas endpoint. The docs sign it with region ``ap-southeast-1``, the official Go
#: SDK with ``ap-singapore-1``; pass the one your account uses as ``region``.
SINGAPORE_ENDPOINT = "https://open-ap-singapore-1.volcengineapi.com"

#: The RTC host of each signing region (https://www.volcengine.com/docs/6348/69828).
RTC_HOSTS = {
    "cn-north-1": DEFAULT_ENDPOINT.removeprefix("https://"),
    "ap-southeast-1": SINGAPORE_ENDPOINT.removeprefix("https://"),
    # The official Go SDK's name for the same overseas endpoint.
    "ap-singapore-1": SINGAPORE_ENDPOINT.removeprefix("https://"),
}
