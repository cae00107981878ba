"""What a /v3/mail/send request from drip must look like: one check, written once (pure).

drip does not call this when it sends; the two stand-ins for SendGrid do, on every request they
receive: the test fake (tests/fakes/sendgrid_server.py) and the benchmark's fake provider
(bench/fake_provider.py). Both answer 400 with the problems, so a builder in `protocol` that
drifts from what SendGrid takes fails the tests and the benchmark alike.

Checked: what SendGrid checks (known top-level keys; 1..1000 personalizations; recipient, sender,
subject and content shapes; headers as strings, none of the reserved names; custom_args as
strings, at most 10,000 bytes per personalization; no ',' or ';' in to.name outside double quotes)
and drip's own contract: exactly one
recipient per personalization, text/plain then text/html, both non-empty, a List-Unsubscribe
URL on every lesson (custom_args drip_lesson), and custom_args drip_delivery_id and
drip_subscriber (a bulk request carries them per personalization; SendGrid merges those over the
top-level ones).

Cheap enough for the benchmark: no serialisation, one pass over the personalizations.
"""

from __future__ import annotations

import json
import re
from typing import Any

from drip.transports.sendgrid.protocol import MAX_PERSONALIZATIONS

TOP_LEVEL_KEYS = frozenset(
    {
        "personalizations",
        "from",
        "reply_to",
        "reply_to_list",
        "subject",
        "content",
        "attachments",
        "template_id",
        "headers",
        "categories",
        "custom_args",
        "send_at",
        "batch_id",
        "asm",
        "ip_pool_name",
        "mail_settings",
        "tracking_settings",
    }
)
RESERVED_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)
"""Headers SendGrid refuses in `headers` (its docs: reserved, set from other fields)."""
REQUIRED_CUSTOM_ARGS = ("drip_delivery_id", "drip_subscriber")
"""Every email carries these; a lesson also carries drip_lesson and a List-Unsubscribe URL (the
double opt-in email to an address not yet subscribed carries neither)."""
CUSTOM_ARGS_LIMIT = 10_000
"""Bytes of JSON per personalization, SendGrid's documented limit."""
CONTENT_TYPES = ["text/plain", "text/html"]
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
"""An RFC 5322 quoted-string: how a name with ',' or ';' must travel in `to.name`."""


def validate_request_payload(payload: Any) -> list[str]:
    """Problems with a v3 Mail Send body as drip sends it; empty when it is acceptable."""
    if not isinstance(payload, dict):
        return ["body is not a JSON object"]
    problems = []
    if not payload.keys() <= TOP_LEVEL_KEYS:
        problems += [
            f"unknown top-level key {key!r}" for key in payload if key not in TOP_LEVEL_KEYS
        ]
    sender = payload.get("from")
    if not isinstance(sender, dict) or "@" not in str(sender.get("email", "")):
        problems.append("from.email is missing or not an address")
    problems += _content_problems(payload.get("content"))
    top_headers = payload.get("headers", {})
    problems += _header_problems("headers", top_headers)
    top_args = payload.get("custom_args", {})
    if not isinstance(top_args, dict):
        problems.append("custom_args must be an object")
        top_args = {}
    personalizations = payload.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        problems.append("personalizations must be a non-empty list")
        return problems
    if len(personalizations) > MAX_PERSONALIZATIONS:
        problems.append(f"personalizations must hold at most {MAX_PERSONALIZATIONS} items")
    subject = payload.get("subject")
    if not isinstance(top_headers, dict):
        top_headers = {}
    for index, item in enumerate(personalizations):
        found = _personalization_problems(item, subject, top_headers, top_args)
        if found:
            problems += [f"personalizations[{index}]{problem}" for problem in found]
    return problems


def delivery_ids_of(payload: Any) -> list[str]:
    """The drip_delivery_id of every personalization (one for a single email, many in bulk)."""
    if not isinstance(payload, dict):
        return []
    top = payload.get("custom_args")
    top_id = top.get("drip_delivery_id") if isinstance(top, dict) else None
    ids = []
    for item in payload.get("personalizations") or []:
        own = item.get("custom_args") if isinstance(item, dict) else None
        # As SendGrid merges them: the personalization's own value, else the request's.
        value = own.get("drip_delivery_id", top_id) if isinstance(own, dict) else top_id
        if isinstance(value, str):
            ids.append(value)
    return ids


def _content_problems(content: Any) -> list[str]:
    if not isinstance(content, list):
        return ["content must be a list", f"content types must be {CONTENT_TYPES}, got []"]
    types = [c.get("type") if isinstance(c, dict) else None for c in content]
    problems = []
    if types != CONTENT_TYPES:
        problems.append(f"content types must be {CONTENT_TYPES}, got {types}")
    for k, c in enumerate(content):
        if not isinstance(c, dict) or not isinstance(c.get("value"), str) or not c["value"]:
            problems.append(f"content[{k}].value must be a non-empty string")
    return problems


def _header_problems(where: str, headers: Any) -> list[str]:
    if not isinstance(headers, dict):
        return [f"{where} must be an object"]
    problems = []
    for name, value in headers.items():
        if not isinstance(value, str):
            problems.append(f"{where}: header {name!r} is not a string")
        if name.lower() in RESERVED_HEADERS:
            problems.append(f"{where}: header {name!r} is reserved")
    return problems


def _personalization_problems(
    item: Any, subject: Any, headers: dict[str, Any], args: dict[str, Any]
) -> list[str]:
    """Problems of one personalization (each to be prefixed with where it is), given what it
    inherits from the request: subject, headers and custom_args."""
    if not isinstance(item, dict):
        return [" must be an object"]
    problems = _recipient_problems(item.get("to"))
    subject = item.get("subject", subject)
    if not isinstance(subject, str) or not subject.strip():
        problems.append(" has no subject")
    own_headers = item.get("headers")
    if own_headers is not None:
        problems += _header_problems(".headers", own_headers)
    if not isinstance(own_headers, dict):
        own_headers = {}
    own_args = item.get("custom_args", {})
    if not isinstance(own_args, dict):
        return [*problems, ".custom_args must be an object"]
    unsubscribe = own_headers.get("List-Unsubscribe", headers.get("List-Unsubscribe"))
    if "drip_lesson" in {**args, **own_args} and not str(unsubscribe).startswith("<http"):
        problems.append(" has no List-Unsubscribe URL")
    # SendGrid merges the personalization's custom_args over the request's.
    return problems + _custom_args_problems({**args, **own_args})


def _recipient_problems(to: Any) -> list[str]:
    if not isinstance(to, list) or len(to) != 1:
        return [".to must hold exactly one recipient"]
    rcpt = to[0]
    if not isinstance(rcpt, dict) or "@" not in str(rcpt.get("email", "")):
        return [".to[0].email is not an address"]
    name = rcpt.get("name")
    if "name" in rcpt and not isinstance(name, str):
        return [".to[0].name is not a string"]
    if isinstance(name, str) and ("," in name or ";" in name) and not _QUOTED.fullmatch(name):
        # SendGrid's documented limitation: it may drop such a message after answering 202.
        return [".to[0].name holds ',' or ';' outside double quotes"]
    return []


def _custom_args_problems(merged: dict[str, Any]) -> list[str]:
    problems = [
        f".custom_args.{key} is missing" for key in REQUIRED_CUSTOM_ARGS if key not in merged
    ]
    chars = 0
    for key, value in merged.items():
        if not isinstance(value, str):
            problems.append(f".custom_args.{key} is not a string (SendGrid requires strings)")
            value = str(value)
        chars += len(key) + len(value)
    # JSON spends at most 12 bytes on a character (a surrogate pair as two \u escapes) and 8 on
    # the quotes and separators of an item: serialise only when the bound is not already safe.
    if 2 + 12 * chars + 8 * len(merged) > CUSTOM_ARGS_LIMIT and (
        len(json.dumps(merged).encode()) > CUSTOM_ARGS_LIMIT
    ):
        problems.append(f".custom_args exceed {CUSTOM_ARGS_LIMIT} bytes")
    return problems
