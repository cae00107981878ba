"""Neither SendGrid client follows a redirect (#7).

A 3xx from the API URL means DRIP_SENDGRID_API_URL points somewhere else than the API: following
it would turn the POST into a GET (302/303) and record the other server's 202 as "sent", re-post
the whole email elsewhere (307/308), and hand the bearer key to another origin. It is fatal for
the run, and the redirect target (a second loopback server here) receives nothing at all.
"""

from __future__ import annotations

import pytest
from tests.fakes.sendgrid_server import FakeSendGrid, Witness
from tests.transport_support import (
    API_KEY,
    SENDGRID_CLIENTS,
    bulk_email,
    leaks,
    make_email,
    sendgrid_client,
)

from drip.transports import FatalTransportError, Outcome

REDIRECTS = [301, 302, 303, 307, 308]


@pytest.mark.parametrize("client", SENDGRID_CLIENTS)
@pytest.mark.parametrize("code", REDIRECTS)
def test_a_redirect_is_fatal_and_never_followed(
    sendgrid: FakeSendGrid, client: str, code: int
) -> None:
    with Witness() as witness:
        # A hostile Location may carry the key (and control characters): both are scrubbed.
        location = f"{witness.url}/v3/mail/send?key={API_KEY}&x=\x1b[31m"
        sendgrid.add_script(f"redirect:{code}:{location}")
        make = bulk_email if client == "bulk" else make_email
        with (
            sendgrid_client(client, sendgrid) as transport,
            pytest.raises(FatalTransportError) as info,
        ):
            transport.send([make(1), make(2)])
        assert witness.requests == []
    message = str(info.value)
    assert message.startswith(
        f"the SendGrid API URL answered with a redirect to {witness.url}/v3/mail/send?key="
    )
    assert message.endswith("; set DRIP_SENDGRID_API_URL to the API itself")
    assert leaks(message, API_KEY, "apikey") == [] and "\x1b" not in message
    assert info.value.results == ()
    assert sendgrid.accepted_ids() == {}


@pytest.mark.parametrize("client", ["official", "fast"])
def test_a_redirect_keeps_what_was_sent_before_it(sendgrid: FakeSendGrid, client: str) -> None:
    with Witness() as witness:
        sendgrid.add_script("202", f"redirect:307:{witness.url}/v3/mail/send")
        with (
            sendgrid_client(client, sendgrid) as transport,
            pytest.raises(FatalTransportError) as info,
        ):
            transport.send([make_email(1), make_email(2), make_email(3)])
        assert witness.requests == []
    assert [(r.delivery_id, r.outcome) for r in info.value.results] == [("d1", Outcome.SENT)]
    assert len(sendgrid.requests) == 2  # nothing after the redirect
    assert sendgrid.accepted_ids() == {"d1": 1}


@pytest.mark.parametrize("client", SENDGRID_CLIENTS)
def test_a_redirect_without_location_is_fatal_too(sendgrid: FakeSendGrid, client: str) -> None:
    sendgrid.add_script("redirect:302:")
    with sendgrid_client(client, sendgrid) as transport, pytest.raises(FatalTransportError) as info:
        transport.send([make_email(1)])
    assert "answered with a redirect to nowhere (no Location)" in str(info.value)
