"""Email addresses and timezones given by people: validated and normalised in one place."""

from __future__ import annotations

import functools
import re
import unicodedata
import zoneinfo

from email_validator import EmailNotValidError, validate_email

from drip.errors import InvalidAddressError

MAX_NAME_LENGTH = 100


def ascii_address(raw: str, *, what: str = "email address") -> str:
    """Validate an address a message can be sent to and from everywhere; return its ASCII form.

    The one rule every message's From and To obey (`drip.mime` applies it to both, the course
    loader and `drip course check` to the sender): email-validator's syntax check without DNS and
    without SMTPUTF8, so the part before the @ must be ASCII; an internationalised domain is
    returned in its IDNA (punycode) form, e.g. `taro@例え.jp` -> `taro@xn--r8jz45g.jp`, which
    every relay accepts. Case is kept. Raises `InvalidAddressError` ("'x' is not a usable
    {what}: why").
    """
    local = raw.rpartition("@")[0]
    if not local.isascii():
        raise InvalidAddressError(
            f"{raw!r} is not a usable {what}: the part before the @ may hold only ASCII letters,"
            " digits and . _ + - (many mail servers refuse anything else); if it was typed with"
            " the IME on, type it again in half-width characters"
        )
    try:
        result = validate_email(raw, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise InvalidAddressError(f"{raw!r} is not a usable {what}: {exc}") from exc
    return result.ascii_email or result.normalized


@functools.lru_cache(maxsize=1024)
def normalize_email(raw: str) -> str:
    """Validate a person's address (no DNS look-up) and return the canonical form used as the
    unique key, stored, and sent to.

    Full-width input (the IME left on: `ｙａｍａｄａ＠example.com`) is NFKC-normalised to ASCII
    first; then `ascii_address` applies: a non-ASCII local part is refused and the domain becomes
    ASCII (IDNA). The result is lower-cased: mailbox providers treat the local part
    case-insensitively in practice and a second row for `Alice@` would be a second subscription.
    Raises `InvalidAddressError` saying what is wrong. A pure function, memoised for the last
    addresses seen: a signup normalises its address twice (the check, then the suppression
    list's hash).
    """
    candidate = unicodedata.normalize("NFKC", raw).strip()
    return ascii_address(candidate).lower()


KEPT_FORMAT_CHARACTERS = frozenset("\u200c\u200d")
"""Zero-width non-joiner and joiner: not printable, but they join emoji sequences (👨‍👩‍👧) and the
letters of some scripts, so they are kept. Variation selectors (❤️) and skin-tone modifiers (👍🏽)
are printable and kept anyway."""
TAG_SEQUENCE_RE = re.compile("(\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f)")
"""An emoji tag sequence (the flag of Scotland): black flag, tag characters, cancel tag."""
WEB_ADDRESS_RE = re.compile(
    r"[a-z][a-z0-9+.-]*://"  # any scheme: http://, hxxp://
    r"|\bwww\."
    r"|[a-z0-9-]+(?:\.[a-z0-9-]+)+/"  # a domain with a path: evil.example/win
    r"|[a-z0-9-]\.(?:com|net|org|info|biz|jp|io|co|xyz|top|site|online|shop|club|app|link"
    r"|click|ru|cn|ly)\b",
    re.IGNORECASE,
)
"""What makes a name look like a web address; names such as K.Tanaka or J.R.R. Tolkien pass."""


def _spaced(text: str) -> str:
    """`text` with every non-printable character a space, but for the kept format characters."""
    if text.isprintable():  # the common case skips the per-character pass
        return text
    return "".join(ch if ch.isprintable() or ch in KEPT_FORMAT_CHARACTERS else " " for ch in text)


def _refuse_unsafe_name(raw: str) -> None:
    """Raise `InvalidAddressError` for a name holding a control character or a web address."""
    control = next(
        (ch for ch in raw if unicodedata.category(ch) == "Cc" and not ch.isspace()), None
    )
    if control is not None:
        raise InvalidAddressError(
            f"the name contains the control character U+{ord(control):04X}; remove it"
        )
    plain = unicodedata.normalize("NFKC", raw).replace("\u3002", ".")
    if WEB_ADDRESS_RE.search(plain):
        raise InvalidAddressError(
            "the name may not contain a web address or a domain name; give just the name"
        )


def clean_name(
    raw: str | None, *, max_length: int | None = MAX_NAME_LENGTH, strict: bool = True
) -> str | None:
    """A display name safe to store and to print in an email; None for None or a blank name.

    Every character that is not printable (control characters such as CR, LF and tab, format and
    private-use characters, which include drip.render's slot markers, and every space but the
    ASCII one, such as the full-width space) becomes a space; runs of spaces collapse to one and
    the ends are trimmed, so `山田\u3000太郎` becomes `山田 太郎`. Emoji sequences stay whole:
    the zero-width joiner and non-joiner and a flag's tag characters are kept.

    `strict` (storing a name given by a person, at signup or import) also refuses, with
    `InvalidAddressError`, a name holding a control character other than whitespace, or a web
    address or domain name (a signup form must not relay spam); rendering passes `strict=False`.
    Raises `InvalidAddressError` when the result is longer than `max_length` characters (None:
    any length) rather than silently cutting it.
    """
    if raw is None:
        return None
    if strict:
        _refuse_unsafe_name(raw)
    if raw.isprintable():
        # No character to replace, no tag sequence (its characters are not printable), and
        # the ASCII space is the only printable whitespace: the common case, in one step.
        name = " ".join(raw.split())
    else:
        parts = TAG_SEQUENCE_RE.split(raw)
        parts[::2] = [_spaced(part) for part in parts[::2]]
        name = " ".join("".join(parts).split())
    if max_length is not None and len(name) > max_length:
        raise InvalidAddressError(f"the name is longer than {max_length} characters")
    return name or None


HOST_SPECIFIC_ZONES = frozenset({"localtime", "posixrules", "Factory"})
"""Keys some hosts' tz databases hold that are no IANA zone (or mean "this host's zone")."""


@functools.cache
def _iana_zones() -> frozenset[str]:
    # available_timezones() walks the tz database (tens of ms): once per process.
    return frozenset(zoneinfo.available_timezones()) - HOST_SPECIFIC_ZONES


def check_timezone(raw: str) -> str:
    """Return `raw` if it names an IANA timezone this host can load, else raise
    `InvalidAddressError`. Host-specific keys (`localtime`, `posixrules`, `Factory`, the
    `posix/` and `right/` copies) are refused: they mean different things on different hosts."""
    if raw in _iana_zones():
        try:
            zoneinfo.ZoneInfo(raw)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            pass
        else:
            return raw
    raise InvalidAddressError(
        f"{raw!r} is not a timezone; use an IANA name such as Asia/Tokyo or Europe/London"
    )
