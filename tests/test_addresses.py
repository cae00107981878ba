"""drip.addresses: the one name cleaner, used when a name is stored and when it is rendered."""

from __future__ import annotations

import pytest

from drip.addresses import (
    MAX_NAME_LENGTH,
    InvalidAddressError,
    check_timezone,
    clean_name,
    normalize_email,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("", None),
        (" \t\r\n\u3000 ", None),
        ("山田 太郎", "山田 太郎"),
        ("  山田   太郎  ", "山田 太郎"),
        ("山田\u3000太郎", "山田 太郎"),
        ("Yamada\r\nBcc: a@b.c", "Yamada Bcc: a@b.c"),
        ("a\x00b\u200bc", "a b c"),
        ("x\ue000name\ue001y\U000f0000", "x name y"),  # slot markers and other private use
        ('<script>alert("x")</script>', '<script>alert("x")</script>'),  # escaping is HTML's job
    ],
)
def test_clean_name_turns_unprintable_characters_into_one_space(
    raw: str | None, expected: str | None
) -> None:
    assert clean_name(raw) == expected
    assert clean_name(raw, max_length=None) == expected


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
