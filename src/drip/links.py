"""Signed links in emails: confirm, unsubscribe and manage, built from the public base URL.

Tokens are HMAC-signed with itsdangerous; each purpose has its own salt, so a token made for one
purpose never works for another. Keys rotate: the first key signs, every key verifies. Confirm
tokens expire; unsubscribe and manage tokens must keep working for as long as the email exists.
"""

from __future__ import annotations

import hashlib
import hmac
from base64 import urlsafe_b64encode
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

from drip.errors import InvalidTokenError

CONFIRM_MAX_AGE_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class LinkBuilder:
    """Builds the links of one deployment. `keys[0]` signs; all keys verify (rotation)."""

    base_url: str
    keys: Sequence[str]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("LinkBuilder needs at least one secret key")
        object.__setattr__(self, "keys", tuple(self.keys))  # hashable, for the cached serializers

    @cache  # noqa: B019 - a handful of builders per process; the serializers are reused per email
    def _serializer(self, purpose: str) -> URLSafeSerializer:
        # itsdangerous signs with the last key and verifies with all of them.
        return URLSafeSerializer(list(reversed(self.keys)), salt=f"drip.{purpose}")

    @cache  # noqa: B019
    def _mac(self, purpose: str) -> hmac.HMAC:
        """HMAC-SHA1 keyed with itsdangerous's derived key for `purpose` (its "django-concat"
        derivation of keys[0]); copied per token so the key is derived and padded only once."""
        derived = hashlib.sha1(f"drip.{purpose}".encode() + b"signer" + self.keys[0].encode())
        return hmac.new(derived.digest(), digestmod=hashlib.sha1)

    def _sign(self, purpose: str, subscriber_id: int) -> str:
        """What `_serializer(purpose).dumps(subscriber_id)` returns, without its per-token key
        derivation and signer objects (a few us per link, two links per email).

        The payload is the compact JSON of the int, url-safe base64 without padding (never
        zlib-compressed: that is only used when it saves 2+ bytes, impossible for an int); then
        "." and the base64 of the HMAC-SHA1 of the payload. tests/test_links.py checks that
        itsdangerous reads these tokens and produces the same ones.
        """
        payload = urlsafe_b64encode(str(int(subscriber_id)).encode()).rstrip(b"=")
        mac = self._mac(purpose).copy()
        mac.update(payload)
        signature = urlsafe_b64encode(mac.digest()).rstrip(b"=")
        return (payload + b"." + signature).decode()

    @cache  # noqa: B019
    def _timed(self, purpose: str) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(list(reversed(self.keys)), salt=f"drip.{purpose}")

    def unsubscribe_url(self, subscriber_id: int) -> str:
        return f"{self.base_url}/u/{self._sign('unsubscribe', subscriber_id)}"

    def manage_url(self, subscriber_id: int) -> str:
        return f"{self.base_url}/m/{self._sign('manage', subscriber_id)}"

    def confirm_url(self, subscriber_id: int) -> str:
        return f"{self.base_url}/c/{self._timed('confirm').dumps(subscriber_id)}"

    def read(self, purpose: str, token: str, *, now: datetime | None = None) -> int:
        """The subscriber id a token carries; raises `InvalidTokenError` if it does not verify.

        `purpose` is "unsubscribe", "manage" or "confirm"; confirm tokens older than
        CONFIRM_MAX_AGE_SECONDS are refused (itsdangerous reads the clock for that check).
        """
        try:
            if purpose == "confirm":
                value = self._timed(purpose).loads(token, max_age=CONFIRM_MAX_AGE_SECONDS)
            else:
                value = self._serializer(purpose).loads(token)
        except SignatureExpired as exc:
            raise InvalidTokenError("this confirmation link has expired; subscribe again") from exc
        except BadSignature as exc:
            raise InvalidTokenError("this link is not valid (it may be cut short)") from exc
        if not isinstance(value, int):
            raise InvalidTokenError("this link is not valid")
        return value
