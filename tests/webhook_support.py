"""Helpers of the webhook tests: a SendGrid-like signer with a key made for the test, and
event objects shaped like SendGrid's."""

from __future__ import annotations

import base64
import itertools
from datetime import datetime
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from drip.transports.sendgrid.events import SIGNATURE_HEADER, TIMESTAMP_HEADER

_ids = itertools.count(1)


class Signer:
    """Signs bodies as SendGrid does: ECDSA P-256 / SHA-256 over timestamp + body, base64 DER."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> str:
        """What SendGrid shows as the verification key: base64 of the DER public key."""
        der = self.private_key.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode("ascii")

    def signature(self, body: bytes, timestamp: str) -> str:
        signed = self.private_key.sign(timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signed).decode("ascii")

    def headers(self, body: bytes, at: datetime) -> dict[str, str]:
        timestamp = str(int(at.timestamp()))
        return {
            SIGNATURE_HEADER: self.signature(body, timestamp),
            TIMESTAMP_HEADER: timestamp,
            "Content-Type": "application/json",
        }


def event(
    kind: str,
    *,
    at: datetime,
    email: str = "reader@example.com",
    delivery_id: int | str | None = None,
    event_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One SendGrid event object; custom args appear at the top level, as SendGrid posts them."""
    item: dict[str, Any] = {
        "email": email,
        "timestamp": int(at.timestamp()),
        "event": kind,
        "sg_event_id": event_id or f"ev-{next(_ids)}",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
    }
    if delivery_id is not None:
        item["drip_delivery_id"] = str(delivery_id)
        item["drip_lesson"] = "welcome"
    item.update(extra)
    return item


def body_of(*events: dict[str, Any]) -> bytes:
    return orjson.dumps(list(events))
