"""drip.mime: the MIME message re-parses to what went in, and untrusted text adds no header."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support import COURSE, TEMPLATES

from drip.addresses import ascii_address
from drip.errors import InvalidAddressError, MimeError
from drip.message import OutgoingEmail
from drip.mime import build_mime, neutralise, quote_display_name, to_bytes
from drip.render import Recipient, Renderer

DATE = datetime(2026, 4, 1, 22, 30, tzinfo=UTC)
LONG_URL = "https://drip.example.com/u/" + "Tok3n-" * 40
EXPECTED_HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Drip-Delivery-Id",
    "Content-Type",
]


def outgoing(**changes: object) -> OutgoingEmail:
    values: dict[str, object] = {
        "delivery_id": "1234",
        "to_address": "yamada@example.com",
        "to_name": "山田 太郎",
        "from_address": "course@example.com",
        "from_name": "40代からの人脈革命",
        "subject": "4つのアプローチを徹底比較",
        "html": "<p>こんにちは</p>\n",
        "text": "こんにちは\n",
        "headers": {
            "List-Unsubscribe": f"<{LONG_URL}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }
    values.update(changes)
    return OutgoingEmail(**values)  # type: ignore[arg-type]


def reparse(message: EmailMessage) -> EmailMessage:
    raw = to_bytes(message)
    assert raw.isascii()
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")
    parsed = BytesParser(policy=default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    return parsed


def body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def test_a_rendered_lesson_round_trips() -> None:
    recipient = Recipient("yamada@example.com", "山田 太郎", LONG_URL, LONG_URL + "/m")
    rendered = Renderer(COURSE, TEMPLATES).lesson(COURSE.lessons[6], recipient)
    email = outgoing(
        subject=rendered.subject, html=rendered.html, text=rendered.text, headers=rendered.headers
    )
    parsed = reparse(build_mime(email, date=DATE, message_id_domain="example.com"))
    assert list(parsed.keys()) == EXPECTED_HEADERS
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert all(part.get_content_charset() == "utf-8" for part in parts)
    assert all(part["Content-Transfer-Encoding"] == "base64" for part in parts)
    assert body(parsed, "plain") == rendered.text
    assert body(parsed, "html").rstrip("\n") == rendered.html.rstrip("\n")
    assert parsed["Subject"] == "4つのアプローチを徹底比較"
    assert parsed["From"].addresses[0].display_name == "40代からの人脈革命"
    assert parsed["From"].addresses[0].addr_spec == "course@example.com"
    assert parsed["To"].addresses[0].display_name == "山田 太郎"
    assert parsed["To"].addresses[0].addr_spec == "yamada@example.com"
    assert parsedate_to_datetime(parsed["Date"]) == DATE
    assert str(parsed["Message-ID"]).endswith("@example.com>")
    assert parsed["List-Unsubscribe"] == f"<{LONG_URL}>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Drip-Delivery-Id"] == "1234"


def test_list_unsubscribe_is_never_encoded_or_folded() -> None:
    raw = to_bytes(build_mime(outgoing(), date=DATE, message_id_domain="example.com"))
    assert f"\r\nList-Unsubscribe: <{LONG_URL}>\r\n".encode() in raw
    assert b"Subject: =?utf-8?" in raw  # non-ASCII subject is RFC 2047-encoded


def test_date_keeps_its_offset_and_must_be_aware() -> None:
    tokyo = DATE.astimezone(timezone(timedelta(hours=9)))
    parsed = reparse(build_mime(outgoing(), date=tokyo, message_id_domain="example.com"))
    assert parsed["Date"].endswith("+0900")
    with pytest.raises(MimeError, match="aware"):
        build_mime(outgoing(), date=datetime(2026, 4, 1), message_id_domain="example.com")


@pytest.mark.parametrize(
    "changes",
    [
        {"headers": {"Bcc": "evil@example.com"}},
        {"headers": {"subject": "x"}},
        {"headers": {"X-Evil": "a\r\nBcc: evil@example.com"}},
        {"headers": {"X Bad": "a"}},
        {"headers": {"List-Unsubscribe": "<https://e.com/" + "a" * 1000 + ">"}},
        {"to_address": "yamada@example.com\r\nBcc: evil@example.com"},
        {"to_address": "a@evil.com@good.com"},
        {"to_address": "not an address"},
        {"delivery_id": "1\r\nBcc: evil@example.com"},
        {"delivery_id": ""},
    ],
)
def test_machine_values_that_could_break_headers_are_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(MimeError):
        build_mime(outgoing(**changes), date=DATE, message_id_domain="example.com")


def test_message_id_domain_is_checked() -> None:
    with pytest.raises(MimeError, match="message_id_domain"):
        build_mime(outgoing(), date=DATE, message_id_domain="example.com>\r\nBcc: x@y")


def test_unicode_domains_are_sent_as_punycode() -> None:
    parsed = reparse(
        build_mime(outgoing(to_address="taro@例え.jp"), date=DATE, message_id_domain="example.com")
    )
    assert parsed["To"].addresses[0].addr_spec == "taro@xn--r8jz45g.jp"


def test_neutralise_keeps_visible_text() -> None:
    assert neutralise("山田\r\n太郎\x00") == "山田 太郎"
    assert neutralise("=?UTF-8?Q?=0A?=") == "=\u200b?UTF-8?Q?=0A?="
    assert neutralise("あ" * 10, limit=5) == "ああああ…"


# --- the property: untrusted names and subjects never add a header ------------------------------

HOSTILE_PIECES = [
    "\r",
    "\n",
    "\r\n",
    "\x00",
    "\x85",
    "\u2028",
    "\u2029",
    "\t",
    " ",
    "Bcc: evil@example.com",
    "\r\nBcc: evil@example.com",
    "=?UTF-8?Q?=0A?=",
    "=?UTF-8?Q?=0D=0ABcc:_evil@example.com?=",
    "=?utf-8?b?DQpCY2M6IGV2aWxAZXhhbXBsZS5jb20=?=",
    '"',
    "<evil@example.com>",
    ",",
    ";",
    ":",
    "\\",
    "(",
    ")",
    "@",
    "山田",
    "太郎",
    "😀",
    "a" * 200,
    "あ" * 120,
    "x" * 1000,
]
hostile_text = st.lists(
    st.one_of(st.sampled_from(HOSTILE_PIECES), st.text(max_size=30)), max_size=8
).map("".join)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(name=hostile_text, subject=hostile_text, sender=hostile_text)
def test_no_header_injection_through_names_or_subject(name: str, subject: str, sender: str) -> None:
    email = outgoing(to_name=name, subject=subject or "件名", from_name=sender)
    parsed = reparse(build_mime(email, date=DATE, message_id_domain="example.com"))
    assert list(parsed.keys()) == EXPECTED_HEADERS
    to = parsed["To"].addresses
    assert len(to) == 1 and to[0].addr_spec == "yamada@example.com"
    sender_address = parsed["From"].addresses
    assert len(sender_address) == 1 and sender_address[0].addr_spec == "course@example.com"
    for value in (parsed["Subject"], to[0].display_name, sender_address[0].display_name):
        assert "\r" not in value and "\n" not in value and "\x00" not in value
    assert body(parsed, "plain") == "こんにちは\n"


@pytest.mark.parametrize(
    "name", ["Yamada, Taro", "Yamada; Taro", "山田, 太郎", '"Boss", Inc.', "a\\b; c"]
)
def test_display_names_with_commas_or_semicolons_stay_one_address(name: str) -> None:
    parsed = reparse(
        build_mime(outgoing(to_name=name, from_name=name), date=DATE, message_id_domain="ex.com")
    )
    for header in ("To", "From"):
        assert len(parsed[header].addresses) == 1
        assert parsed[header].addresses[0].display_name == name


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("山田 太郎", "山田 太郎"),
        ("Yamada, Taro", '"Yamada, Taro"'),
        ("Yamada; Taro", '"Yamada; Taro"'),
        ('"Boss", Inc.', '"\\"Boss\\", Inc."'),
        ("a\\b; c", '"a\\\\b; c"'),
    ],
)
def test_quote_display_name_for_apis_that_split_at_commas(name: str, quoted: str) -> None:
    assert quote_display_name(name) == quoted


# --- the sender rule, shared with `drip course check` (#3) -------------------------------------


@pytest.mark.parametrize("address", ["講座@example.jp", "a b@example.com", "course@example"])
def test_an_unusable_sender_is_refused_by_the_one_address_rule(address: str) -> None:
    with pytest.raises(MimeError, match="From address"):
        build_mime(outgoing(from_address=address), date=DATE, message_id_domain="example.com")
    with pytest.raises(InvalidAddressError):
        ascii_address(address)


def test_an_international_sender_domain_is_sent_as_punycode() -> None:
    assert ascii_address("course@人脈.jp") == "course@xn--gmq593j.jp"
    parsed = reparse(
        build_mime(
            outgoing(from_address="course@人脈.jp"), date=DATE, message_id_domain="example.com"
        )
    )
    assert parsed["From"].addresses[0].addr_spec == "course@xn--gmq593j.jp"
