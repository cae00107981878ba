"""Signed links in emails: confirm, unsubscribe and manage, built from the public base URL.

Tokens are HMAC-signed with itsdangerous; each purpose has its own salt, so a token made for one
purpose never works for another. Keys rotate: the first key signs, every key verifies. Confirm
tokens expire; unsubscribe and manage tokens must keep working for as long as the email exists.
"""

from __future__ import annotations

import hashlib
import hmac
from binascii import b2a_base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache

from itsdangerous import BadSignature, TimestampSigner, URLSafeSerializer, URLSafeTimedSerializer

from drip.errors import InvalidTokenError

CONFIRM_MAX_AGE_SECONDS = 7 * 24 * 3600
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _urlsafe_b64(data: bytes) -> bytes:
    """`base64.urlsafe_b64encode(data)` without its "=" padding (itsdangerous's form), in C calls
    only."""
    return b2a_base64(data, newline=False).rstrip(b"=").translate(_URLSAFE)


def _payload(subscriber_id: int) -> bytes:
    """A token's payload: the compact JSON of the id, url-safe base64 without padding."""
    return _urlsafe_b64(str(int(subscriber_id)).encode())


@dataclass(frozen=True)
class LinkBuilder:
    """Builds the links of one deployment. `keys[0]` signs; all keys verify (rotation)."""

    base_url: str
    keys: Sequence[str]
    _macs: dict[str, hmac.HMAC] = field(default_factory=dict, init=False, repr=False, compare=False)
    """`_mac`'s answers by purpose: a plain dict, as `functools.cache` on a method hashed the
    builder (its URL and keys) on every token."""

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("LinkBuilder needs at least one secret key")
        object.__setattr__(self, "keys", tuple(self.keys))  # hashable, for the cached serializers

    @cache  # noqa: B019 - a handful of builders per process; the serializers are reused per email
    def _serializer(self, purpose: str) -> URLSafeSerializer:
        # itsdangerous signs with the last key and verifies with all of them.
        return URLSafeSerializer(list(reversed(self.keys)), salt=f"drip.{purpose}")

    def _mac(self, purpose: str) -> hmac.HMAC:
        """HMAC-SHA1 keyed with itsdangerous's derived key for `purpose` (its "django-concat"
        derivation of keys[0]); copied per token so the key is derived and padded only once.
        The digest named by string: OpenSSL's HMAC, whose copy is one C call."""
        known = self._macs.get(purpose)
        if known is None:
            derived = hashlib.sha1(f"drip.{purpose}".encode() + b"signer" + self.keys[0].encode())
            known = self._macs[purpose] = hmac.new(derived.digest(), digestmod="sha1")
        return known

    def _sign(self, purpose: str, subscriber_id: int) -> str:
        """What `_serializer(purpose).dumps(subscriber_id)` returns, without its per-token key
        derivation and signer objects (two links per email: this is on the send hot path).

        The payload is the compact JSON of the int, url-safe base64 without padding (never
        zlib-compressed: that is only used when it saves 2+ bytes, impossible for an int); then
        "." and the base64 of the HMAC-SHA1 of the payload. tests/test_links.py checks that
        itsdangerous reads these tokens and produces the same ones.
        """
        return self._signed(purpose, _payload(subscriber_id))

    def _signed(self, purpose: str, payload: bytes) -> str:
        """The token of `_sign` for an already encoded payload."""
        mac = self._mac(purpose).copy()
        mac.update(payload)
        return (payload + b"." + _urlsafe_b64(mac.digest())).decode()

    def _timed(self, purpose: str, signed_at: int | None = None) -> URLSafeTimedSerializer:
        """itsdangerous' timed serializer (the token format already in sent emails); signing
        with the timestamp `signed_at`, so no clock is read here."""

        class AtTheGivenTime(TimestampSigner):
            def get_timestamp(self) -> int:
                if signed_at is None:
                    raise ValueError("signing a timed token needs its time")
                return signed_at

        return URLSafeTimedSerializer(
            list(reversed(self.keys)), salt=f"drip.{purpose}", signer=AtTheGivenTime
        )

    def unsubscribe_url(self, subscriber_id: int) -> str:
        return f"{self.base_url}/u/{self._sign('unsubscribe', subscriber_id)}"

    def manage_url(self, subscriber_id: int) -> str:
        return f"{self.base_url}/m/{self._sign('manage', subscriber_id)}"

    def reader_urls(self, subscriber_id: int) -> tuple[str, str]:
        """(`unsubscribe_url`, `manage_url`) of one subscriber."""
        return self.readers_urls([subscriber_id])[0]

    def readers_urls(self, subscriber_ids: Iterable[int]) -> list[tuple[str, str]]:
        """`reader_urls` of each subscriber (the bulk send composes these for every reader):
        the payload is encoded once for both tokens."""
        unsubscribe = f"{self.base_url}/u/"
        manage = f"{self.base_url}/m/"
        signed = self._signed
        urls = []
        for subscriber_id in subscriber_ids:
            payload = _payload(subscriber_id)
            urls.append(
                (
                    unsubscribe + signed("unsubscribe", payload),
                    manage + signed("manage", payload),
                )
            )
        return urls

    def confirm_url(self, subscriber_id: int, *, now: datetime) -> str:
        """The double opt-in link, signed as of `now` (valid CONFIRM_MAX_AGE_SECONDS from then)."""
        token = self._timed("confirm", int(now.timestamp())).dumps(subscriber_id)
        return f"{self.base_url}/c/{token}"

    def confirm_token(self, token: str) -> tuple[int, datetime]:
        """(subscriber id, moment it was signed) of a confirm token whose signature verifies,
        however old: for "send me a new link" on an expired link, and to tell a link made after
        an unsubscribe from an older one. Raises `InvalidTokenError` like `read`; `read` alone
        says whether the token is still valid."""
        try:
            value, signed_at = self._timed("confirm").loads(token, return_timestamp=True)
        except BadSignature as exc:
            raise InvalidTokenError("this link is not valid (it may be cut short)") from exc
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidTokenError("this link is not valid")
        return value, signed_at

    def read(self, purpose: str, token: str, *, now: datetime) -> int:
        """The subscriber id a token carries; raises `InvalidTokenError` if it does not verify.

        `purpose` is "unsubscribe", "manage" or "confirm"; a confirm token signed more than
        CONFIRM_MAX_AGE_SECONDS before `now` is refused as expired (exactly that old still
        verifies), and so is one signed after `now`.
        """
        try:
            if purpose == "confirm":
                value, signed_at = self._timed(purpose).loads(token, return_timestamp=True)
                age = (now - signed_at).total_seconds()
                if age > CONFIRM_MAX_AGE_SECONDS or age < 0:
                    raise InvalidTokenError(
                        "this confirmation link has expired; subscribe again to get a new one"
                    )
            else:
                value = self._serializer(purpose).loads(token)
        except BadSignature as exc:
            raise InvalidTokenError("this link is not valid (it may be cut short)") from exc
        if not isinstance(value, int):
            raise InvalidTokenError("this link is not valid")
        return value
