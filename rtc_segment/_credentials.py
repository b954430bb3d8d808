"""Access keys: the ``Credentials`` value and where it is found.

Lookup order (``Credentials.resolve``): an explicit argument, then the environment
(``VOLC_ACCESSKEY``, ``VOLC_SECRETKEY``, ``VOLC_SESSION_TOKEN`` — the names the official SDK
reads), then the INI file ``~/.volc/credentials``. The secret key and the session token never
appear in a ``repr``, a ``str`` or an exception message.
"""

from __future__ import annotations

import configparser
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ._errors import CredentialsError

__all__ = ["Credentials"]

ENV_ACCESS_KEY = "VOLC_ACCESSKEY"
ENV_SECRET_KEY = "VOLC_SECRETKEY"
ENV_SESSION_TOKEN = "VOLC_SESSION_TOKEN"

#: What a secret is shown as wherever it would be printed (repr, display output, messages).
REDACTED = "***"


def default_credentials_path() -> Path:
    """The file the official SDK reads: ``~/.volc/credentials``."""
    return Path.home() / ".volc" / "credentials"


def _require_text(name: str) -> Any:
    """An attrs validator: a non-empty ``str``, or an error that names the argument."""

    def validate(_instance: object, _attribute: object, value: object) -> None:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        if not value:
            raise ValueError(f"{name} must not be empty")
        _check_printable(name, value)

    return validate


def _check_printable(name: str, value: str) -> None:
    # Keys and tokens are printable ASCII without spaces. Whitespace is a copy-paste slip
    # (a trailing newline from a file), and a CR/LF in a value sent as a header could
    # inject headers. The message never shows the value.
    if not value.isascii() or not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError(f"{name} must be printable ASCII without whitespace")


def _validate_token(_instance: object, _attribute: object, value: str | None) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"session_token must be a str or None, not {type(value).__name__}")
    if value is not None:
        _check_printable("session_token", value)


def _normalise_token(value: str | None) -> str | None:
    # "" and None both mean "no token": the signer then omits X-Security-Token.
    return None if value == "" else value


@attrs.frozen(repr=False)
class Credentials:
    """A Volcengine access key pair, optionally with an STS session token.

    Args:
        access_key_id: The access key id (``AK…``); shown in ``repr``.
        secret_access_key: The secret key; never shown.
        session_token: The STS session token of temporary credentials; never shown. An empty
            string is stored as ``None``.

    Raises:
        TypeError: An argument has the wrong type (the message names it).
        ValueError: The access key id or the secret key is empty.
    """

    access_key_id: str = attrs.field(validator=_require_text("access_key_id"))
    secret_access_key: str = attrs.field(validator=_require_text("secret_access_key"))
    session_token: str | None = attrs.field(
        default=None, converter=_normalise_token, validator=_validate_token
    )

    def __repr__(self) -> str:
        token = None if self.session_token is None else REDACTED
        return (
            f"Credentials(access_key_id={self.access_key_id!r}, "
            f"secret_access_key={REDACTED!r}, session_token={token!r})"
        )

    __str__ = __repr__

    @property
    def account_fingerprint(self) -> str:
        """A stable, non-secret id of the key: the first 16 hex digits of sha256(access key id).

        Used to name per-account state (such as a shared rate-limit bucket) without writing the
        access key id itself into Redis keys or logs.
        """
        return hashlib.sha256(self.access_key_id.encode()).hexdigest()[:16]

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Credentials | None:
        """Credentials from ``VOLC_ACCESSKEY``/``VOLC_SECRETKEY`` (+ ``VOLC_SESSION_TOKEN``).

        Args:
            environ: The mapping to read; ``os.environ`` when ``None``.

        Returns:
            The credentials, or ``None`` when neither key variable is set (or both are empty).

        Raises:
            CredentialsError: Exactly one of the two key variables is set — a half-configured
                environment is a mistake worth reporting rather than silently skipping.
        """
        env = os.environ if environ is None else environ
        access_key_id = env.get(ENV_ACCESS_KEY, "")
        secret = env.get(ENV_SECRET_KEY, "")
        if not access_key_id and not secret:
            return None
        if not access_key_id or not secret:
            missing = ENV_ACCESS_KEY if not access_key_id else ENV_SECRET_KEY
            present = ENV_SECRET_KEY if not access_key_id else ENV_ACCESS_KEY
            raise CredentialsError(f"{present} is set in the environment but {missing} is not")
        return cls(access_key_id, secret, env.get(ENV_SESSION_TOKEN) or None)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str] | None = None, *, profile: str = "default"
    ) -> Credentials | None:
        """Credentials from an INI file (the official SDK's ``~/.volc/credentials``).

        The file has a ``[default]`` section (or the section named by ``profile``) with
        ``access_key_id``, ``secret_access_key`` and optionally ``session_token``. Values are
        taken literally (no ``%`` interpolation, so any secret can be written as is).

        Args:
            path: The file; ``~/.volc/credentials`` when ``None``.
            profile: The section to read.

        Returns:
            The credentials, or ``None`` when the file or the section does not exist.

        Raises:
            CredentialsError: The file cannot be read or parsed, or the section lacks a key.
                The message names the file, never its contents.
        """
        file = default_credentials_path() if path is None else Path(path)
        parser = configparser.ConfigParser(interpolation=None)
        problem: str | None = None
        try:
            with file.open(encoding="utf-8") as stream:
                parser.read_file(stream)
        except FileNotFoundError:
            return None
        except configparser.Error as exc:
            # configparser's own messages quote the offending line, which may hold the
            # secret: report only where the problem is.
            problem = f"is malformed{_where(exc)}"
        except UnicodeDecodeError:
            problem = "is not UTF-8 text"
        except OSError as exc:
            problem = f"cannot be read ({type(exc).__name__})"
        if problem is not None:
            # Raised outside the except block, so that not even __context__ (which
            # ``from None`` only hides) holds the parser's error and its quoted line.
            raise CredentialsError(f"credentials file {str(file)!r} {problem}") from None
        if not parser.has_section(profile):
            return None
        section = parser[profile]
        missing = [
            option for option in ("access_key_id", "secret_access_key") if not section.get(option)
        ]
        if missing:
            raise CredentialsError(
                f"credentials file {str(file)!r}, section [{profile}], "
                f"has no value for {' and '.join(missing)}"
            )
        return cls(
            section["access_key_id"],
            section["secret_access_key"],
            section.get("session_token") or None,
        )

    @classmethod
    def resolve(
        cls,
        credentials: Credentials | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> Credentials:
        """The credentials to use: ``credentials`` if given, else the environment, else the file.

        Raises:
            TypeError: ``credentials`` is neither ``None`` nor a :class:`Credentials`.
            CredentialsError: No source has credentials (the message names all three), or a
                source is misconfigured (see :meth:`from_environment`, :meth:`from_file`).
        """
        if credentials is not None:
            if not isinstance(credentials, Credentials):
                raise TypeError(
                    f"credentials must be a Credentials or None, not {type(credentials).__name__}"
                )
            return credentials
        found = cls.from_environment(environ)
        if found is None:
            found = cls.from_file(path)
        if found is None:
            file = default_credentials_path() if path is None else Path(path)
            raise CredentialsError(
                "no credentials found: none were passed as an argument, "
                f"{ENV_ACCESS_KEY}/{ENV_SECRET_KEY} are not set in the environment, "
                f"and {str(file)!r} does not exist or has no [default] section"
            )
        return found


def _where(exc: configparser.Error) -> str:
    """' (line N)' for a parse error, from the line number only (never the line's text)."""
    lineno = getattr(exc, "lineno", None)
    if lineno is None and isinstance(exc, configparser.ParsingError) and exc.errors:
        lineno = exc.errors[0][0]
    return f" (line {lineno})" if lineno is not None else ""
