"""SendGrid's Event Webhook without a server or a database: signature checks, event parsing,
and the in-doubt settle policy (`drip.settle_policy`), table-driven."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from tests.webhook_support import Signer, body_of, event

from drip.settle_policy import GRACE, InDoubtFacts, Settle, decide_in_doubt
from drip.statuses import SubscriberStatus
from drip.transports.sendgrid.events import (
    KNOWN_TYPES,
    MAX_AGE,
    MAX_SKEW,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    UnreadableEvents,
    load_verification_key,
    parse_events,
    verify_signature,
)

NOW = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
SIGNER = Signer()
KEY = load_verification_key(SIGNER.public_key)


def check(body: bytes, headers: dict[str, str], now: datetime = NOW) -> datetime:
    return verify_signature(
        KEY,
        signature=headers.get(SIGNATURE_HEADER),
        timestamp=headers.get(TIMESTAMP_HEADER),
        body=body,
        now=now,
    )


# --- the key ----------------------------------------------------------------------------------


def test_the_key_is_read_as_sendgrid_shows_it_or_as_pem() -> None:
    pem = (
        SIGNER.private_key.public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    wrapped = "\n".join(SIGNER.public_key[i : i + 40] for i in range(0, 120, 40))
    wrapped += SIGNER.public_key[120:] + "\n"
    for text in (SIGNER.public_key, f"  {SIGNER.public_key}\n", pem, wrapped):
        assert load_verification_key(text).public_numbers() == KEY.public_numbers()


@pytest.mark.parametrize(
    "text",
    ["", "not base64 !", base64.b64encode(b"not a key").decode(), "SG.abc.def"],
)
def test_a_key_that_is_not_a_public_key_is_refused_without_quoting_it(text: str) -> None:
    with pytest.raises(ValueError, match="not a base64 public key") as raised:
        load_verification_key(text)
    assert not text or text not in str(raised.value)


def test_a_key_on_another_curve_is_refused() -> None:
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = other.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="not an ECDSA P-256 key"):
        load_verification_key(base64.b64encode(der).decode())


# --- signatures -------------------------------------------------------------------------------


def test_a_good_signature_verifies_and_returns_the_signing_moment() -> None:
    body = body_of(event("delivered", at=NOW))
    assert check(body, SIGNER.headers(body, NOW)) == NOW


def test_a_signature_made_with_another_key_is_refused() -> None:
    body = body_of(event("delivered", at=NOW))
    with pytest.raises(SignatureError, match="does not match"):
        check(body, Signer().headers(body, NOW))


def test_any_flipped_byte_of_the_body_or_the_timestamp_is_refused() -> None:
    body = body_of(event("bounce", at=NOW))
    headers = SIGNER.headers(body, NOW)
    for index in (0, len(body) // 2, len(body) - 1):
        flipped = bytearray(body)
        flipped[index] ^= 0x01
        with pytest.raises(SignatureError, match="does not match"):
            check(bytes(flipped), headers)
    moved = {**headers, TIMESTAMP_HEADER: str(int(NOW.timestamp()) - 1)}
    with pytest.raises(SignatureError, match="does not match"):
        check(body, moved)
    signature = bytearray(base64.b64decode(headers[SIGNATURE_HEADER]))
    signature[-1] ^= 0x01
    bad = {**headers, SIGNATURE_HEADER: base64.b64encode(bytes(signature)).decode()}
    with pytest.raises(SignatureError):
        check(body, bad)


def test_the_timestamp_must_be_at_most_five_minutes_old_and_barely_in_the_future() -> None:
    body = b"[]"
    assert timedelta(minutes=5) == MAX_AGE and timedelta(seconds=60) == MAX_SKEW
    for fine in (NOW - MAX_AGE, NOW + MAX_SKEW, NOW - timedelta(seconds=1)):
        assert check(body, SIGNER.headers(body, fine)) == fine
    second = timedelta(seconds=1)
    with pytest.raises(SignatureError, match="more than 5 minutes old"):
        check(body, SIGNER.headers(body, NOW - MAX_AGE - second))
    with pytest.raises(SignatureError, match="more than 60 seconds in the future"):
        check(body, SIGNER.headers(body, NOW + MAX_SKEW + second))


@pytest.mark.parametrize("missing", [SIGNATURE_HEADER, TIMESTAMP_HEADER])
def test_a_missing_or_empty_header_is_refused_by_name(missing: str) -> None:
    body = b"[]"
    headers = SIGNER.headers(body, NOW)
    for value in (None, ""):
        changed = {**headers}
        if value is None:
            del changed[missing]
        else:
            changed[missing] = value
        with pytest.raises(SignatureError, match=f"missing {missing}"):
            check(body, changed)


@pytest.mark.parametrize(
    ("timestamp", "message"),
    [
        ("17648", "more than 5 minutes old"),
        ("-1", "not a Unix time"),
        ("1.5", "not a Unix time"),
        ("１２３", "not a Unix time"),  # full-width digits: str.isdigit says yes
        ("9" * 13, "not a Unix time"),
        ("99999999999", "in the future"),
    ],
)
def test_timestamps_that_are_not_plain_unix_seconds_are_refused(
    timestamp: str, message: str
) -> None:
    body = b"[]"
    headers = {SIGNATURE_HEADER: SIGNER.signature(body, "0"), TIMESTAMP_HEADER: timestamp}
    with pytest.raises(SignatureError, match=message):
        check(body, headers)


@pytest.mark.parametrize("signature", ["not base64!", "QUJD=", "%%%%", "A" * 201, "QUJD"])
def test_a_signature_that_is_not_base64_der_is_refused(signature: str) -> None:
    body = b"[]"
    headers = {**SIGNER.headers(body, NOW), SIGNATURE_HEADER: signature}
    with pytest.raises(SignatureError) as raised:
        check(body, headers)
    assert signature not in str(raised.value)


# --- parsing ----------------------------------------------------------------------------------


def parse(*items: object) -> list[object]:
    return parse_events(orjson.dumps(list(items)), received_at=NOW).events  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("kind", "extra", "status"),
    [
        ("bounce", {"type": "bounce", "reason": "550 5.1.1 no such user"}, "bounced"),
        ("bounce", {}, "bounced"),
        ("bounce", {"type": "blocked", "reason": "554 IP listed"}, None),
        ("dropped", {"reason": "Bounced Address"}, "bounced"),
        ("dropped", {"reason": "Invalid"}, "bounced"),
        ("dropped", {}, "bounced"),
        ("dropped", {"reason": "Unsubscribed Address"}, "unsubscribed"),
        ("dropped", {"reason": "Spam Reporting Address"}, "complained"),
        ("dropped", {"reason": "Spam Content (if spam checker app enabled)"}, None),
        ("dropped", {"reason": "Invalid SMTPAPI header"}, None),
        ("spamreport", {}, "complained"),
        ("unsubscribe", {}, "unsubscribed"),
        ("group_unsubscribe", {"asm_group_id": 1}, "unsubscribed"),
        ("group_resubscribe", {"asm_group_id": 1}, None),
        ("processed", {}, None),
        ("deferred", {"response": "400 try again later"}, None),
        ("delivered", {"response": "250 OK"}, None),
        ("open", {"useragent": "Mozilla/5.0"}, None),
        ("click", {"url": "https://drip.example.jp/"}, None),
        ("some_new_type", {}, None),
    ],
)
def test_what_each_event_does_to_the_address(
    kind: str, extra: dict[str, object], status: str | None
) -> None:
    [parsed] = parse(event(kind, at=NOW, email=" Reader@Example.COM ", delivery_id=7, **extra))
    assert parsed.type == kind and parsed.email == "reader@example.com"  # type: ignore[attr-defined]
    assert parsed.suppress == (None if status is None else SubscriberStatus(status))  # type: ignore[attr-defined]
    assert parsed.proves_sent is (kind in KNOWN_TYPES)  # type: ignore[attr-defined]
    assert parsed.delivery_id == 7 and parsed.occurred_at == NOW  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("42", 42),
        ("9223372036854775807", 2**63 - 1),
        ("9223372036854775808", None),
        ("0", None),
        ("confirm-12-1764550800", None),
        (42, None),  # custom args are strings; a number is not drip's
        ("４２", None),
        ("", None),
        (None, None),
        ("12 ", None),
    ],
)
def test_only_a_ledger_id_is_taken_from_drip_delivery_id(
    value: object, expected: int | None
) -> None:
    item = event("processed", at=NOW)
    item["drip_delivery_id"] = value
    [parsed] = parse(item)
    assert parsed.delivery_id == expected  # type: ignore[attr-defined]


def test_events_without_custom_args_or_email_still_parse() -> None:
    plain = event("bounce", at=NOW)
    no_email = event("bounce", at=NOW)
    del no_email["email"]
    first, second = parse(plain, no_email)
    assert first.delivery_id is None and first.suppress == SubscriberStatus.BOUNCED  # type: ignore[attr-defined]
    assert second.email is None and second.suppress is None  # type: ignore[attr-defined]


def test_items_that_are_not_events_are_skipped_and_counted() -> None:
    items = [
        1,
        "x",
        None,
        [],
        {},
        {"event": 5},
        {"event": ""},
        event("open", at=NOW),
    ]
    parsed = parse_events(orjson.dumps(items), received_at=NOW)
    assert parsed.skipped == 7 and [e.type for e in parsed.events] == ["open"]


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"{}", b'{"event": "bounce"}', b"42", b'"[]"', b"[1,", b"\xff\xfe[]"],
)
def test_a_body_that_is_not_a_json_array_is_unreadable_and_not_quoted(body: bytes) -> None:
    with pytest.raises(UnreadableEvents) as raised:
        parse_events(body, received_at=NOW)
    assert "event" not in str(raised.value) or body == b""


def test_timestamps_that_cannot_be_dates_become_the_receiving_moment() -> None:
    later = NOW + timedelta(seconds=30)
    stamps = [
        b'"1764550800"',
        b"null",
        b"true",
        b"100000000000000000000",
        b"-1e12",
        b"1.5e300",
        b"0",
    ]
    items = [orjson.dumps({**event("open", at=NOW), "timestamp": "T"}) for _ in stamps]
    filled = [item.replace(b'"T"', stamp) for item, stamp in zip(items, stamps, strict=True)]
    body = b"[" + b",".join(filled) + b"]"
    parsed = parse_events(body, received_at=later)
    assert [e.occurred_at for e in parsed.events] == [later] * len(stamps)
    [fraction] = parse({**event("open", at=NOW), "timestamp": NOW.timestamp() + 0.5})
    assert fraction.occurred_at == NOW + timedelta(seconds=0.5)  # type: ignore[attr-defined]


def test_a_repeated_event_id_in_one_body_is_kept_once_and_long_ids_are_hashed() -> None:
    long_id = "x" * 500
    items = [
        event("open", at=NOW, event_id="same"),
        event("click", at=NOW, event_id="same"),
        event("open", at=NOW, event_id=long_id),
        {**event("open", at=NOW), "sg_event_id": None},
        {**event("open", at=NOW), "sg_event_id": None},
    ]
    parsed = parse_events(orjson.dumps(items), received_at=NOW)
    ids = [e.event_id for e in parsed.events]
    assert ids[0] == "same" and parsed.events[0].type == "open"
    assert ids[1] is not None and ids[1].startswith("sha256:") and len(ids[1]) == 71
    assert ids[2:] == [None, None]


def test_nul_characters_are_removed_and_values_nested_deeper_than_sendgrids_dropped() -> None:
    item = event(
        "bounce",
        at=NOW,
        reason="bad\u0000reason",
        category=["a\u0000", "b"],
        pool={"name\u0000": "p", "id": 1},
        nested={"k": ["v"]},
        lists=[[1]],
    )
    deep = b"[" * 1000 + b'"\\u0000"' + b"]" * 1000
    body = orjson.dumps([item])[:-1] + b',{"event":"open","deep":' + deep + b"}]"
    parsed = parse_events(body, received_at=NOW)
    first, second = parsed.events
    assert first.payload["reason"] == "badreason" and first.payload["category"] == ["a", "b"]
    assert first.payload["pool"] == {"name": "p", "id": 1}
    assert "nested" not in first.payload and "lists" not in first.payload
    assert second.type == "open" and "deep" not in second.payload
    assert parsed.skipped == 0


def test_long_types_are_cut_to_the_column() -> None:
    [parsed] = parse(event("x" * 100, at=NOW))
    assert parsed.type == "x" * 32  # type: ignore[attr-defined]


# --- the settle policy ------------------------------------------------------------------------

LEASE_END = NOW
AFTER = LEASE_END + timedelta(minutes=1)
TICK = timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("proof", "witness", "now", "decision"),
    [
        ("processed", None, LEASE_END, Settle.SENT),
        ("delivered", LEASE_END - timedelta(days=9), LEASE_END, Settle.SENT),
        ("bounce", AFTER, LEASE_END + 2 * GRACE, Settle.SENT),
        (None, None, LEASE_END + 10 * GRACE, Settle.WAIT),  # no webhook: the operator decides
        (None, LEASE_END - TICK, LEASE_END + 10 * GRACE, Settle.WAIT),  # not caught up
        (None, LEASE_END, LEASE_END + GRACE - TICK, Settle.WAIT),  # within the grace
        (None, LEASE_END, LEASE_END + GRACE, Settle.NOT_SENT),
        (None, AFTER, LEASE_END + 3 * GRACE, Settle.NOT_SENT),
    ],
)
def test_the_in_doubt_policy(
    proof: str | None, witness: datetime | None, now: datetime, decision: Settle
) -> None:
    facts = InDoubtFacts(proof=proof, lease_until=LEASE_END, latest_processed_claim=witness)
    assert decide_in_doubt(facts, now) is decision


def test_the_grace_is_a_parameter_and_a_day_by_default() -> None:
    facts = InDoubtFacts(proof=None, lease_until=LEASE_END, latest_processed_claim=AFTER)
    assert timedelta(hours=24) == GRACE
    hour = timedelta(hours=1)
    assert decide_in_doubt(facts, LEASE_END + hour, grace=hour) is Settle.NOT_SENT
    assert decide_in_doubt(facts, LEASE_END + hour) is Settle.WAIT
