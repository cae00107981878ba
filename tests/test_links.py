"""Signed links: purposes do not mix, tampering is refused, keys rotate."""

from __future__ import annotations

import pytest

from drip.links import InvalidTokenError, LinkBuilder

BASE = "https://drip.example.jp"


def token(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_each_link_reads_back_for_its_own_purpose_only() -> None:
    links = LinkBuilder(BASE, ["k1"])
    unsubscribe = links.unsubscribe_url(42)
    assert unsubscribe.startswith(f"{BASE}/u/")
    assert links.read("unsubscribe", token(unsubscribe)) == 42
    assert links.read("manage", token(links.manage_url(42))) == 42
    assert links.read("confirm", token(links.confirm_url(42))) == 42
    with pytest.raises(InvalidTokenError):
        links.read("manage", token(unsubscribe))
    with pytest.raises(InvalidTokenError):
        links.read("confirm", token(unsubscribe))


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: t[:-1],
        lambda t: t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1],
        lambda t: "x" + t,
    ],
)
def test_tampered_or_truncated_tokens_are_refused(damage: object) -> None:
    links = LinkBuilder(BASE, ["k1"])
    good = token(links.unsubscribe_url(7))
    assert callable(damage)
    with pytest.raises(InvalidTokenError):
        links.read("unsubscribe", damage(good))


def test_rotation_old_links_keep_working_new_links_use_the_new_key() -> None:
    old = LinkBuilder(BASE, ["old"])
    rotated = LinkBuilder(BASE, ["new", "old"])
    old_token = token(old.unsubscribe_url(5))
    assert rotated.read("unsubscribe", old_token) == 5
    new_token = token(rotated.unsubscribe_url(5))
    with pytest.raises(InvalidTokenError):
        old.read("unsubscribe", new_token)
    with pytest.raises(InvalidTokenError):
        LinkBuilder(BASE, ["other"]).read("unsubscribe", old_token)
