"""Signed links: purposes do not mix, tampering is refused, keys rotate."""

from __future__ import annotations

import pytest
from itsdangerous import BadSignature, URLSafeSerializer

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


@pytest.mark.parametrize("subscriber_id", [0, 1, 42, 99_999, 2**40 + 7])
@pytest.mark.parametrize("purpose", ["unsubscribe", "manage"])
def test_fast_signing_makes_the_tokens_itsdangerous_makes_and_reads(
    purpose: str, subscriber_id: int
) -> None:
    links = LinkBuilder(BASE, ["new", "old"])
    url = (
        links.unsubscribe_url(subscriber_id)
        if purpose == "unsubscribe"
        else links.manage_url(subscriber_id)
    )
    made = token(url)
    reference = URLSafeSerializer(["old", "new"], salt=f"drip.{purpose}")
    assert made == reference.dumps(subscriber_id)
    assert reference.loads(made) == subscriber_id
    # Signed with keys[0] ("new") only.
    assert URLSafeSerializer("new", salt=f"drip.{purpose}").loads(made) == subscriber_id
    with pytest.raises(BadSignature):
        URLSafeSerializer("old", salt=f"drip.{purpose}").loads(made)
