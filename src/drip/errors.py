"""The exception hierarchy, all in one place. Entry points map these to messages and exit codes.

Every error the library raises on purpose derives from `DripError`; its message says what is
wrong and what to do about it, so the CLI can print it as it is, and `exit_code` is the CLI's
exit code for it (1: the job had to stop; 2: usage or configuration).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drip.transports.base import SendResult


class DripError(Exception):
    """Base of every error drip raises on purpose."""

    exit_code = 1


class ConfigError(DripError):
    """A setting (environment variable, course.toml, CLI option) is missing or invalid."""

    exit_code = 2


class MissingApiKeyError(ConfigError):
    """The SendGrid transport was chosen without SENDGRID_API_KEY (one wording everywhere)."""

    def __init__(self) -> None:
        super().__init__("DRIP_TRANSPORT=sendgrid needs SENDGRID_API_KEY; set it to your API key")


class UnknownTimezoneError(ConfigError):
    """A timezone name this host cannot load (not an IANA zone, or tzdata is missing)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"timezone {key!r} is not an IANA zone name; use one such as Asia/Tokyo")
        self.key = key


class UsageError(DripError):
    """The user asked for something that cannot be done as asked (bad argument, bad file)."""

    exit_code = 2


class CourseError(DripError):
    """The course on disk cannot be loaded (missing or unreadable file, broken front matter,
    invalid course.toml): a configuration error, exit code 2."""

    exit_code = 2


class CourseFileError(CourseError):
    """A course file cannot be read: `path`, the 1-based `line` when known, and the `reason`."""

    def __init__(self, path: Path, line: int | None, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class CourseNotSendableError(ConfigError):
    """`drip send` refuses a course that `drip course check` finds errors in, or that could not
    be rendered or sent (the sender, the links, a template): nothing is claimed."""


class InvalidAddressError(UsageError):
    """An email address, name or timezone given by a person is unusable."""


# --- rendering -------------------------------------------------------------------------------


class RenderError(DripError):
    """A template cannot produce a valid email (syntax error, undefined variable, no unsubscribe
    link) or a recipient value is unusable. The message names the template file and line."""


class MimeError(DripError):
    """An email cannot be turned into a safe MIME message (bad address, header or date)."""


# --- the database and the store ----------------------------------------------------------------


class SchemaError(DripError):
    """The database schema is not at the revision this version of drip needs."""

    exit_code = 2


class DatabaseUnavailableError(DripError):
    """The database cannot be reached (server down, wrong host, unreadable file)."""

    exit_code = 1


class SuppressedAddressError(DripError):
    """The address unsubscribed, bounced or complained: it is never re-subscribed silently."""

    exit_code = 2


class NotFoundError(DripError):
    """No subscriber or delivery with the given id."""

    exit_code = 2


class StateError(DripError):
    """The row is not in a state that allows the requested change."""

    exit_code = 2


# --- links and transports ----------------------------------------------------------------------


class InvalidTokenError(DripError):
    """A token was tampered with, truncated, made for another purpose, or has expired."""

    exit_code = 2


class FatalTransportError(DripError):
    """The transport cannot send anything in this run (401/403, SMTP authentication refused).

    The run must stop. `results` holds a result for every email of the failing `send` call that
    the provider answered (in input order, possibly empty): those messages really were sent or
    refused and must be recorded as such. With several requests in flight (the fast SendGrid
    client, bulk mode) that can include emails after the one that met the fatal answer. An email
    with no result was not sent (it met the fatal answer, or was never started): the caller
    releases it for a later run.
    """

    def __init__(self, message: str, results: Sequence[SendResult] = ()) -> None:
        super().__init__(message)
        self.results: tuple[SendResult, ...] = tuple(results)
