"""drip.addresses: the one name cleaner, used when a name is stored and when it is rendered."""

from __future__ import annotations

import pytest

from drip.addresses import (
    MAX_NAME_LENGTH,
    check_timezone,
    clean_name,
    normalize_email,
)
from drip.errors import InvalidAddressError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("", None),
        (" \t\r\n\u3000 ", None),
        ("山田 太郎", "山田 太郎"),
        ("  山田   太郎  ", "山田 太郎"),
        ("山田\u3000太郎", "山田 太郎"),
        ("山田\t太郎", "山田 太郎"),  # a tab is a space, not deleted
        ("Yamada\r\nBcc: a@b.c", "Yamada Bcc: a@b.c"),
        ("a\u200bb\u202ec", "a b c"),  # zero-width space, right-to-left override
        ("x\ue000name\ue001y\U000f0000", "x name y"),  # slot markers and other private use
        ('<script>alert("x")</script>', '<script>alert("x")</script>'),  # escaping is HTML's job
    ],
)
def test_clean_name_turns_unprintable_characters_into_one_space(
    raw: str | None, expected: str | None
) -> None:
    assert clean_name(raw) == expected
    assert clean_name(raw, max_length=None, strict=False) == expected


def test_clean_name_when_rendering_turns_control_characters_into_spaces() -> None:
    assert clean_name("a\x00b\x1bc\x7fd", max_length=None, strict=False) == "a b c d"


EMOJI_NAMES = [
    "👨\u200d👩\u200d👧",  # family: ZWJ sequence
    "❤\ufe0f",  # emoji presentation (variation selector 16)
    "☺\ufe0e",  # text presentation (variation selector 15)
    "👍🏽",  # skin-tone modifier
    "🏳\ufe0f\u200d🌈",
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # tag sequence
    "山田 太郎 👨\u200d💻",
]


@pytest.mark.parametrize("name", EMOJI_NAMES)
def test_clean_name_keeps_emoji_sequences_whole(name: str) -> None:
    assert clean_name(name) == name
    assert clean_name(f" {name}\t", max_length=None, strict=False) == name


def test_clean_name_drops_tag_characters_outside_a_flag_sequence() -> None:
    assert clean_name("a\U000e0041\U000e0042b") == "a b"


@pytest.mark.parametrize(
    "raw",
    [
        "【当選】10万円 受取はこちら https://evil.example/win さん",
        "http://evil.example",
        "HTTPS://EVIL.EXAMPLE",
        "hxxp://evil",
        "www.evil.jp",
        "evil.example/win",
        "賞金は evil.com で",
        "ｅｖｉｌ．ｃｏｍ",  # full-width
        "evil。com",  # an ideographic full stop works as a dot in domains
    ],
)
def test_clean_name_refuses_web_addresses(raw: str) -> None:
    with pytest.raises(InvalidAddressError, match="web address"):
        clean_name(raw)


@pytest.mark.parametrize("raw", ["a\x00b", "a\x1bb", "a\x7fb", "a\x9bb"])
def test_clean_name_refuses_control_characters(raw: str) -> None:
    with pytest.raises(InvalidAddressError, match="control character"):
        clean_name(raw)


@pytest.mark.parametrize("raw", ["K.Tanaka", "J.R.R. Tolkien", "Mr.Smith", "St. John", "a@b"])
def test_clean_name_accepts_names_with_dots(raw: str) -> None:
    assert clean_name(raw) == raw


def test_clean_name_refuses_a_long_name_unless_unlimited() -> None:
    longest = "名" * MAX_NAME_LENGTH
    assert clean_name(f"  {longest}\n") == longest
    with pytest.raises(InvalidAddressError, match=f"longer than {MAX_NAME_LENGTH} characters"):
        clean_name(longest + "前")
    assert clean_name(longest + "前", max_length=None) == longest + "前"


# --- email addresses (#4) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("yamada@example.com", "yamada@example.com"),
        (" Yamada@Example.COM ", "yamada@example.com"),
        ("ｙａｍａｄａ@example.com", "yamada@example.com"),  # full-width: the IME was left on
        ("ｙａｍａｄａ＠ｅｘａｍｐｌｅ．ｃｏｍ", "yamada@example.com"),
        ("taro@例え.jp", "taro@xn--r8jz45g.jp"),  # stored and sent with the ASCII (IDNA) domain
        ("taro@xn--r8jz45g.jp", "taro@xn--r8jz45g.jp"),
    ],
)
def test_normalize_email_gives_the_ascii_address(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize("raw", ["講座@example.jp", "tarō@example.com", "太郎@例え.jp"])
def test_normalize_email_refuses_a_non_ascii_local_part(raw: str) -> None:
    with pytest.raises(InvalidAddressError, match=r"before the @.* only ASCII"):
        normalize_email(raw)


# --- timezones (#13) --------------------------------------------------------------------------


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "Europe/London", "UTC", "America/New_York"])
def test_check_timezone_accepts_iana_names(zone: str) -> None:
    assert check_timezone(zone) == zone


@pytest.mark.parametrize(
    "zone",
    ["localtime", "posixrules", "Factory", "posix/Asia/Tokyo", "right/Asia/Tokyo", "Tokyo", ""],
)
def test_check_timezone_refuses_host_specific_pseudo_zones(zone: str) -> None:
    with pytest.raises(InvalidAddressError, match="is not a timezone"):
        check_timezone(zone)
