"""The emulator's STS and instance metadata: temporary credentials it issues and accepts.

* STS (``Version=2018-01-01``): ``AssumeRole`` (GET, signed with a long-term key the
  emulator knows, service ``sts``) and ``AssumeRoleWithOIDC`` (POST form, unsigned; the
  OIDC token must be one registered with ``Emulator.add_oidc_token``).
* Instance metadata (IMDSv2): ``GET /latest/api/token`` (with the TTL header), then with
  that session token ``GET /volcstack/latest/iam/security_credentials?type=user`` (the
  role names, a JSON list) and ``POST /volcstack/latest/iam/security_credentials/<role>``.

Issued credentials are added to the emulator's keys with their expiry: the RTC actions
accept them until then, and afterwards answer HTTP 401 ``InvalidSecurityToken`` ("the
session token has expired"; the real service's code for an expired token is not
documented -- this is the closest documented wording, see ``_envelope``).

Nothing here formats a secret key, a session token or an OIDC token.
"""

from __future__ import annotations

import json
import random
import secrets
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

import attrs

from .._credentials import Credentials
from . import _envelope as errors
from ._auth import AccessKey, RequestView, authenticate
from ._envelope import JSON_HEADERS, Answer, EmulatorRequest, Envelope, ServiceFailure

__all__ = ["IMDS_PATHS", "STS_ACTIONS", "STS_VERSION", "CredentialsIssuer"]

STS_VERSION = "2018-01-01"
STS_ACTIONS = frozenset({"AssumeRole", "AssumeRoleWithOIDC"})
_IMDS_TOKEN_PATH = "/latest/api/token"
_IMDS_ROLES_PATH = "/volcstack/latest/iam/security_credentials"
#: The record's ``action`` of each instance-metadata request.
IMDS_PATHS = {"token": "imds:token", "roles": "imds:roles", "credentials": "imds:credentials"}
_TTL_HEADER = "x-volc-ecs-metadata-token-ttl-seconds"
_TOKEN_HEADER = "x-volc-ecs-metadata-token"
_TEXT_HEADERS: tuple[tuple[str, str], ...] = (("content-type", "text/plain; charset=utf-8"),)


def imds_action(path: str) -> str | None:
    """The record's action name of an instance-metadata path, or ``None``."""
    if path == _IMDS_TOKEN_PATH:
        return IMDS_PATHS["token"]
    if path == _IMDS_ROLES_PATH:
        return IMDS_PATHS["roles"]
    if path.startswith(f"{_IMDS_ROLES_PATH}/"):
        return IMDS_PATHS["credentials"]
    return None


def _imds_failure(status: int, message: str) -> Answer:
    return Answer(status, _TEXT_HEADERS, message.encode())


class CredentialsIssuer:
    """Issues temporary credentials (STS, instance role) into the emulator's key table.

    Args:
        keys: The emulator's keys by access key id (issued ones are added here).
        wall_clock: The emulator's current time.
        seed: Seeds the issued key ids (secrets and tokens are random regardless).
        lifetime: Seconds issued credentials last; ``None`` honours ``DurationSeconds``
            (3600 for the instance role).
    """

    def __init__(
        self,
        keys: dict[str, AccessKey],
        wall_clock: Callable[[], datetime],
        *,
        seed: int | None,
        lifetime: float | None,
    ) -> None:
        self._keys = keys
        self._wall_clock = wall_clock
        self._rng = random.Random(None if seed is None else f"sts/{seed}")
        self.lifetime = lifetime
        self.oidc_tokens: set[str] = set()
        self.instance_roles: list[str] = []
        self._imds_tokens: set[str] = set()
        self.issued = 0

    # -- issuing ---------------------------------------------------------------------------

    def _issue(self, account: str, duration: float) -> dict[str, str]:
        lifetime = duration if self.lifetime is None else min(duration, self.lifetime)
        expires = self._wall_clock() + timedelta(seconds=lifetime)
        self.issued += 1
        access_key_id = f"AKTP{self._rng.getrandbits(96):024x}"
        credentials = Credentials(
            access_key_id, secrets.token_urlsafe(30), f"STS2{secrets.token_urlsafe(48)}"
        )
        self._keys[access_key_id] = AccessKey(credentials, account, expires_at=expires)
        return {
            "AccessKeyId": credentials.access_key_id,
            "SecretAccessKey": credentials.secret_access_key,
            "SessionToken": credentials.session_token or "",
            "ExpiredTime": expires.isoformat(timespec="seconds"),
        }

    def expire_all(self) -> int:
        """Make every issued key expire now (as a revoked role would); return how many."""
        now = self._wall_clock()
        expired = 0
        for access_key_id, key in list(self._keys.items()):
            if key.expires_at is not None and key.expires_at > now:
                self._keys[access_key_id] = attrs.evolve(key, expires_at=now)
                expired += 1
        return expired

    # -- STS -------------------------------------------------------------------------------

    def serve_sts(
        self,
        request: EmulatorRequest,
        pairs: Sequence[tuple[str, str]],
        params: Mapping[str, str],
        envelope: Envelope,
        *,
        region: str,
        max_skew: float,
    ) -> tuple[Answer, str | None, str | None]:
        """Answer an STS request: ``(answer, account, error code)``."""
        try:
            if envelope.action == "AssumeRole":
                if request.method != "GET":
                    raise errors.method_not_allowed("AssumeRole must be called with GET")
                view = RequestView(
                    method=request.method,
                    path=request.path,
                    query_pairs=pairs,
                    header=request.headers.get,
                    body=request.body,
                )
                key = authenticate(
                    view,
                    lookup=self._keys.get,
                    now=self._wall_clock(),
                    region=region,
                    service="sts",
                    max_skew=max_skew,
                )
                if key.expires_at is not None:
                    raise errors.invalid_parameter(
                        "AssumeRole must be signed with a long-term key, not a temporary one",
                        "InvalidParameter.TemporaryKey",
                    )
                account, trn = self._role(params)
                credentials = self._issue(account, self._duration(params))
                result = {
                    "Credentials": credentials,
                    "AssumedRoleUser": {"Trn": f"{trn}/{params.get('RoleSessionName', '')}"},
                }
                return envelope.success(result), account, None
            if request.method != "POST":
                raise errors.method_not_allowed("AssumeRoleWithOIDC must be called with POST")
            form = dict(urllib.parse.parse_qsl(request.body.decode("utf-8", "replace")))
            merged = {**params, **form}
            token = merged.get("OIDCToken", "")
            if not token:
                raise errors.invalid_parameter("The OIDCToken is missing", "MissingParameter")
            if token not in self.oidc_tokens:
                raise ServiceFailure(
                    400, "InvalidIdentityToken", "The OIDC token is not valid or has expired"
                )
            account, trn = self._role(merged)
            issued = self._issue(account, self._duration(merged))
            issued["Expiration"] = issued.pop("ExpiredTime")
            result = {
                "Credentials": issued,
                "AssumedRoleUser": {"Trn": f"{trn}/{merged.get('RoleSessionName', '')}"},
            }
            return envelope.success(result), account, None
        except ServiceFailure as failure:
            return envelope.failure(failure), None, failure.code

    @staticmethod
    def _role(params: Mapping[str, str]) -> tuple[str, str]:
        trn = params.get("RoleTrn", "")
        prefix, _, role = trn.partition(":role/")
        account = prefix.removeprefix("trn:iam::")
        if not trn.startswith("trn:iam::") or not role or not account:
            raise errors.invalid_parameter(
                "RoleTrn must be trn:iam::<account id>:role/<role name>",
                "InvalidParameter.RoleTrn",
            )
        if not params.get("RoleSessionName"):
            raise errors.invalid_parameter("RoleSessionName is missing", "MissingParameter")
        return account, trn

    @staticmethod
    def _duration(params: Mapping[str, str]) -> float:
        value = params.get("DurationSeconds", "3600")
        if not value.isdigit() or not 900 <= int(value) <= 43200:
            raise errors.invalid_parameter(
                "DurationSeconds must be 900-43200", "InvalidParameter.DurationSeconds"
            )
        return float(value)

    # -- instance metadata ---------------------------------------------------------------

    def remove_oidc_token(self, token: str) -> None:
        """Stop accepting ``token``."""
        self.oidc_tokens.discard(token)

    def serve_imds(self, request: EmulatorRequest) -> tuple[Answer, str | None]:
        """Answer an instance-metadata request: ``(answer, error code)``."""
        path = request.path
        if path == _IMDS_TOKEN_PATH:
            if request.method not in ("GET", "PUT"):
                return _imds_failure(405, "method not allowed"), "MethodNotAllowed"
            if not request.headers.get(_TTL_HEADER, "").isdigit():
                return _imds_failure(400, f"missing {_TTL_HEADER}"), "MissingTTL"
            token = secrets.token_urlsafe(24)
            self._imds_tokens.add(token)
            return Answer(200, _TEXT_HEADERS, token.encode()), None
        if request.headers.get(_TOKEN_HEADER) not in self._imds_tokens:
            return _imds_failure(401, "missing or unknown metadata token"), "Unauthorized"
        if path == _IMDS_ROLES_PATH:
            if request.method != "GET":
                return _imds_failure(405, "method not allowed"), "MethodNotAllowed"
            return Answer(200, JSON_HEADERS, json.dumps(self.instance_roles).encode()), None
        role = urllib.parse.unquote(path.removeprefix(f"{_IMDS_ROLES_PATH}/"))
        if request.method != "POST":
            return _imds_failure(405, "method not allowed"), "MethodNotAllowed"
        if role not in self.instance_roles:
            return _imds_failure(404, "no such role on this instance"), "NotFound"
        issued = self._issue(f"instance-role/{role}", 3600.0)
        return Answer(200, JSON_HEADERS, json.dumps(issued).encode()), None
