"""What a hostile or broken server says never reaches the ledger, a log or an error as such.

Every `SendResult.detail` and `provider_id` a transport produces, and every message it raises,
is cleaned (no NUL or other control characters, cut to its column's size) and scrubbed of the
credential in plain and encoded forms, scrubbing first and cutting after. The servers here echo
the API key and the SMTP password back in plain, base64 and URL-encoded forms.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from urllib.parse import quote, quote_plus

import pytest
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.fakes.smtp_server import FakeSmtp
from tests.transport_support import (
    API_KEY,
    SENDGRID_CLIENTS,
    SMTP_PASSWORD,
    SMTP_USER,
    control_characters,
    leaks,
    make_email,
    sendgrid_client,
    smtp_transport,
)

from drip.message import OutgoingEmail
from drip.transports import FatalTransportError, Outcome, SendResult
from drip.transports.base import MAX_DETAIL, MAX_PROVIDER_ID, Scrubber

pytestmark = pytest.mark.filterwarnings(
    "ignore:Session.login_data is deprecated:DeprecationWarning"
)


def outcome_texts(call: Callable[[Sequence[OutgoingEmail]], list[SendResult]]) -> list[str]:
    """Every text a send produced: each result's detail and provider_id, or the error."""
    try:
        results = call([make_email(1), make_email(2)])
        error: list[str] = []
    except FatalTransportError as exc:
        results = list(exc.results)
        error = [str(exc), repr(exc)]
    return error + [r.detail for r in results] + [r.provider_id or "" for r in results]


# -- control characters and length ------------------------------------------------------------


@pytest.mark.parametrize("client", SENDGRID_CLIENTS)
@pytest.mark.parametrize("step", ["nul:400", "nul:503", "nul:202", "longid"])
def test_sendgrid_replies_are_cleaned_and_cut(
    sendgrid: FakeSendGrid, client: str, step: str
) -> None:
    sendgrid.add_script(step)
    with sendgrid_client(client, sendgrid) as transport:
        [result] = transport.send([make_email(1)])
    expected = {"nul:400": {Outcome.FAILED}, "nul:503": {Outcome.RETRY}}.get(
        step,
        # aiohttp refuses a header value with NUL in it (the answer is unreadable: in doubt);
        # the official client reads it and keeps a cleaned message id.
        {Outcome.SENT, Outcome.IN_DOUBT},
    )
    assert result.outcome in expected
    assert control_characters(result.detail) == []
    assert len(result.detail) <= MAX_DETAIL
    if result.outcome is Outcome.SENT:
        assert result.provider_id and control_characters(result.provider_id) == []
        assert len(result.provider_id) <= MAX_PROVIDER_ID


@pytest.mark.parametrize(
    ("step", "outcome"),
    [
        ("550+nul", Outcome.FAILED),
        ("mail:451+nul", Outcome.RETRY),
        ("rcpt:550+nul", Outcome.FAILED),
    ],
)
def test_smtp_replies_are_cleaned_and_cut(smtp: FakeSmtp, step: str, outcome: Outcome) -> None:
    smtp.add_script(step)
    with smtp_transport(smtp.url()) as transport:
        [result] = transport.send([make_email(1)])
    assert result.outcome is outcome
    assert control_characters(result.detail) == []
    assert 0 < len(result.detail) <= MAX_DETAIL


# -- the credential echoed back -----------------------------------------------------------------


@pytest.mark.parametrize("client", SENDGRID_CLIENTS)
@pytest.mark.parametrize("step", ["echo:403", "echo:401", "echo:400", "echo:500", "echo:202"])
def test_sendgrid_key_echoed_by_the_server_is_scrubbed_everywhere(
    sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture, client: str, step: str
) -> None:
    sendgrid.add_script(step)
    with caplog.at_level(logging.DEBUG), sendgrid_client(client, sendgrid) as transport:
        texts = outcome_texts(transport.send)
    assert sendgrid.requests[0].step == step  # the server did echo the key
    texts.append(caplog.text)
    assert [leaks(text, API_KEY, "apikey") for text in texts] == [[]] * len(texts)


def test_smtp_password_echoed_in_a_535_is_scrubbed_everywhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with FakeSmtp(users={SMTP_USER: "the-real-one"}, echo_auth=True) as fake:
        transport = smtp_transport(fake.url(SMTP_USER, SMTP_PASSWORD))
        with caplog.at_level(logging.DEBUG), pytest.raises(FatalTransportError) as info:
            transport.send([make_email(1)])
    assert fake.auth_failures >= 1
    assert "refused the login" in str(info.value)
    # The client's log, not the fake server's own (aiosmtpd logs under "mail.log").
    client_log = [r.getMessage() for r in caplog.records if not r.name.startswith("mail.log")]
    texts = [str(info.value), repr(info.value), *client_log]
    assert [leaks(text, SMTP_PASSWORD, SMTP_USER) for text in texts] == [[]] * len(texts)


# -- the scrubber itself -------------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "echo",
    [
        API_KEY,
        b64(API_KEY),
        base64.urlsafe_b64encode(API_KEY.encode()).decode(),
        b64(f"Bearer {API_KEY}"),  # the key inside a larger base64 blob, at each alignment
        b64(f"x{API_KEY}"),
        b64(f"xy{API_KEY}"),
        b64(f"apikey:{API_KEY}"),
        API_KEY[:9],  # a prefix of 8 characters or more that survived someone's cut
        API_KEY[:30],
    ],
)
def test_scrubber_removes_every_form_of_the_secret(echo: str) -> None:
    scrub = Scrubber(API_KEY, users=("apikey",))
    text = scrub.text(f"error: {echo} (see docs)")
    assert text.startswith("error: ") and text.endswith(" (see docs)")
    assert leaks(text, API_KEY, "apikey") == []
    assert "[redacted]" in text
    # What is left of the echo: at most the encoded "Bearer " and a few boundary characters.
    assert len(text) <= len("error: ") + len("[redacted]") + 16 + len(" (see docs)")


def test_scrubber_scrubs_before_it_cuts_and_cleans_before_it_scrubs() -> None:
    password = "p@ss/w0rd:with%odd chars"
    scrub = Scrubber(password, users=("user",))
    for cut_at in range(280, 300):
        text = scrub.text("x" * cut_at + password)
        assert len(text) <= MAX_DETAIL and leaks(text, password, "user") == []
    # NUL bytes inside the secret do not hide it: they are removed first.
    assert scrub.text(f"a {password[:5]}\x00{password[5:]} b") == "a [redacted] b"
    assert scrub.text(f"a {b64(chr(0) + 'user' + chr(0) + password)} b") == "a [redacted] b"
    assert scrub.text(f"a {quote(password, safe='')} b") == "a [redacted] b"
    assert scrub.text(f"a {quote_plus(password)} b") == "a [redacted] b"
    assert scrub.text("p@ss/w0 is short") == "p@ss/w0 is short"  # 7 characters: no prefix
    assert scrub.text("p@ss/w0r is not") == "[redacted] is not"


def test_scrubber_without_secrets_only_cleans() -> None:
    scrub = Scrubber(None)
    assert scrub.text("ok\x00\x1b[1m\r\n\tfine\ud800") == "ok[1m\n\tfine"
    assert scrub.text("é" * 1000, limit=10) == "é" * 10
    result = SendResult("d1", Outcome.SENT, provider_id="id\x00" + "x" * 500, detail="HTTP 202")
    cleaned = scrub.result(result)
    assert cleaned.provider_id == "id" + "x" * (MAX_PROVIDER_ID - 2)
    same = SendResult("d1", Outcome.SENT, provider_id="fake-1", detail="HTTP 202")
    assert scrub.result(same) is same
