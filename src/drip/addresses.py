"""Email addresses and timezones given by people: validated and normalised in one place."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email

from drip.errors import UsageError

MAX_NAME_LENGTH = 100


class InvalidAddressError(UsageError):
    """An email address, name or timezone given by a person is unusable."""


def normalize_email(raw: str) -> str:
    """Validate syntax (no DNS look-up) and return the canonical form used as the unique key.

    The domain is lower-cased by the validator; the local part is lower-cased too, because
    mailbox providers treat it case-insensitively in practice and a second row for `Alice@` would
    be a second subscription. Raises `InvalidAddressError` saying what is wrong.
    """
    candidate = raw.strip()
    try:
        result = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddressError(f"{raw!r} is not a usable email address: {exc}") from exc
    return result.normalized.lower()


def clean_name(raw: str | None, *, max_length: int | None = MAX_NAME_LENGTH) -> str | None:
    """A display name safe to store and to print in an email; None for None or a blank name.

    Every character that is not printable (control characters such as CR and LF, format and
    private-use characters, which include drip.render's slot markers, and every space but the
    ASCII one, such as the full-width space) becomes a space; runs of spaces collapse to one and
    the ends are trimmed, so `山田\u3000太郎` becomes `山田 太郎`. Raises `InvalidAddressError`
    when the result is longer than `max_length` characters (None: any length) rather than
    silently cutting it.
    """
    if raw is None:
        return None
    if not raw.isprintable():  # the common case skips the per-character pass
        raw = "".join(ch if ch.isprintable() else " " for ch in raw)
    name = " ".join(raw.split())
    if max_length is not None and len(name) > max_length:
        raise InvalidAddressError(f"the name is longer than {max_length} characters")
    return name or None


def check_timezone(raw: str) -> str:
    """Return `raw` if it names an IANA timezone, else raise `InvalidAddressError`."""
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidAddressError(
            f"{raw!r} is not a timezone; use an IANA name such as Asia/Tokyo or Europe/London"
        ) from exc
    return raw
