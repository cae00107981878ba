"""Signed links: purposes do not mix, tampering is refused, keys rotate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from itsdangerous import BadSignature, URLSafeSerializer

from drip.errors import InvalidTokenError
from drip.links import CONFIRM_MAX_AGE_SECONDS, LinkBuilder

BASE = "https://drip.example.jp"
NOW = datetime(2026, 4, 1, 7, 30, tzinfo=UTC)


def token(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_each_link_reads_back_for_its_own_purpose_only() -> None:
    links = LinkBuilder(BASE, ["k1"])
    unsubscribe = links.unsubscribe_url(42)
    assert unsubscribe.startswith(f"{BASE}/u/")
    assert links.read("unsubscribe", token(unsubscribe), now=NOW) == 42
    assert links.read("manage", token(links.manage_url(42)), now=NOW) == 42
    assert links.read("confirm", token(links.confirm_url(42, now=NOW)), now=NOW) == 42
    with pytest.raises(InvalidTokenError):
        links.read("manage", token(unsubscribe), now=NOW)
    with pytest.raises(InvalidTokenError):
        links.read("confirm", token(unsubscribe), now=NOW)


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
        links.read("unsubscribe", damage(good), now=NOW)


def test_rotation_old_links_keep_working_new_links_use_the_new_key() -> None:
    old = LinkBuilder(BASE, ["old"])
    rotated = LinkBuilder(BASE, ["new", "old"])
    old_token = token(old.unsubscribe_url(5))
    assert rotated.read("unsubscribe", old_token, now=NOW) == 5
    new_token = token(rotated.unsubscribe_url(5))
    with pytest.raises(InvalidTokenError):
        old.read("unsubscribe", new_token, now=NOW)
    with pytest.raises(InvalidTokenError):
        LinkBuilder(BASE, ["other"]).read("unsubscribe", old_token, now=NOW)


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


def test_a_confirm_link_is_good_for_exactly_seven_days() -> None:
    links = LinkBuilder(BASE, ["k1"])
    sent = token(links.confirm_url(7, now=NOW))
    week = timedelta(seconds=CONFIRM_MAX_AGE_SECONDS)
    assert week == timedelta(days=7)
    assert links.read("confirm", sent, now=NOW) == 7
    assert links.read("confirm", sent, now=NOW + week) == 7  # the last second it is good
    with pytest.raises(InvalidTokenError, match="expired"):
        links.read("confirm", sent, now=NOW + week + timedelta(seconds=1))
    with pytest.raises(InvalidTokenError, match="expired"):
        links.read("confirm", sent, now=NOW - timedelta(seconds=1))  # signed in the future


def test_confirm_links_already_sent_keep_working() -> None:
    """Tokens made by itsdangerous itself (the format of every confirmation email so far)."""
    from itsdangerous import URLSafeTimedSerializer

    old = URLSafeTimedSerializer(["k1"], salt="drip.confirm").dumps(9)
    assert LinkBuilder(BASE, ["k1"]).read("confirm", old, now=datetime.now(UTC)) == 9


def test_each_refusal_tells_the_reader_why_in_its_own_words() -> None:
    """The messages are what the web page shows: expired, cut short, not a subscriber's id."""
    links = LinkBuilder(BASE, ["k1"])
    confirm = token(links.confirm_url(42, now=NOW))
    later = NOW + timedelta(seconds=CONFIRM_MAX_AGE_SECONDS + 1)
    with pytest.raises(InvalidTokenError) as expired:
        links.read("confirm", confirm, now=later)
    assert str(expired.value) == (
        "this confirmation link has expired; subscribe again to get a new one"
    )
    with pytest.raises(InvalidTokenError) as cut:
        links.read("unsubscribe", token(links.unsubscribe_url(42))[:-3], now=NOW)
    assert str(cut.value) == "this link is not valid (it may be cut short)"
    not_an_id = URLSafeSerializer(["k1"], salt="drip.unsubscribe").dumps("42")
    with pytest.raises(InvalidTokenError) as wrong:
        links.read("unsubscribe", not_an_id, now=NOW)
    assert str(wrong.value) == "this link is not valid"


def test_a_timed_token_is_never_signed_without_its_time() -> None:
    """No clock is read in links.py: signing a confirm token without the run's time is a bug."""
    with pytest.raises(ValueError) as missing:
        LinkBuilder(BASE, ["k1"])._timed("confirm").dumps(42)
    assert str(missing.value) == "signing a timed token needs its time"


def test_a_builder_without_keys_is_refused() -> None:
    with pytest.raises(ValueError) as raised:
        LinkBuilder(BASE, [])
    assert str(raised.value) == "LinkBuilder needs at least one secret key"
