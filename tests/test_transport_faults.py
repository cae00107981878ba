"""Fault injection, transport half: every way a provider can answer, against real loopback servers.

Each case scripts one fault into the loopback SendGrid fake (tests/fakes/sendgrid_server.py; for
the official, fast and bulk clients) or a real aiosmtpd server (tests/fakes/smtp_server.py),
sends two emails and checks:

- the outcome of each email (SENT / RETRY with a finite retry_after / FAILED / IN_DOUBT) or the
  `FatalTransportError` (with no result for an email the fatal answer met);
- what the provider actually accepted (so SENT and IN_DOUBT are never claimed for a message the
  provider did not get, and nothing is sent twice);
- that no text the transport returned or raised holds a control character, exceeds its size, or
  holds any form of the credential (the servers echo it in some cases).

`FAULTS_INJECTED` is the number of cases (quoted in docs/reliability.md); run
`python -m pytest tests/test_transport_faults.py -q -rA -k count` to print it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from tests.fakes.sendgrid_server import FakeSendGrid, Witness
from tests.fakes.smtp_server import FakeSmtp
from tests.transport_support import (
    API_KEY,
    NOW,
    SENDGRID_CLIENTS,
    SMTP_PASSWORD,
    SMTP_USER,
    bulk_email,
    control_characters,
    free_port,
    leaks,
    make_email,
    sendgrid_client,
    smtp_transport,
)

from drip.message import OutgoingEmail
from drip.transports import FatalTransportError, Outcome, SendResult, Transport
from drip.transports.base import MAX_DETAIL, MAX_ERROR, MAX_PROVIDER_ID, MAX_RETRY_AFTER

pytestmark = pytest.mark.filterwarnings(
    "ignore:Session.login_data is deprecated:DeprecationWarning"
)

SENT, RETRY, FAILED, IN_DOUBT = Outcome.SENT, Outcome.RETRY, Outcome.FAILED, Outcome.IN_DOUBT
FATAL = "fatal"
ANY_WAIT = "any"  # retry_after not checked beyond "finite and within [0, 24 h]"


@dataclass(frozen=True)
class Expect:
    """What two emails sent into one fault give: the outcomes (a set where the timing of a lost
    connection decides between two answers that are both safe), or FATAL; the delivery ids the
    provider accepted; the first email's retry_after."""

    first: frozenset[Outcome] | str
    second: frozenset[Outcome] = frozenset()
    accepted: frozenset[str] = frozenset()
    retry_after: float | str | None = ANY_WAIT


def expect(
    first: Outcome | set[Outcome] | str,
    second: Outcome | set[Outcome] | None = None,
    accepted: str = "",
    retry_after: float | str | None = ANY_WAIT,
) -> Expect:
    def outcomes(value: Outcome | set[Outcome] | None) -> frozenset[Outcome]:
        return (
            frozenset()
            if value is None
            else frozenset(value if isinstance(value, set) else {value})
        )

    return Expect(
        first if isinstance(first, str) else outcomes(first),
        outcomes(second),
        frozenset(accepted.split()),
        retry_after,
    )


@dataclass(frozen=True)
class SendGridFault:
    """One scripted answer and what each client makes of it (`by_client` overrides `default`)."""

    step: str
    default: Expect
    by_client: dict[str, Expect] = field(default_factory=dict)

    def expected(self, client: str) -> Expect:
        return self.by_client.get(client, self.default)


# Shorthands for the usual shapes. One request per email for the official and fast clients
# (after an outage-like answer the second is not attempted); bulk mode puts both emails in one
# request, so both share its answer, and a request refused with 400/413 is re-sent one by one.
ACCEPTED = expect(SENT, SENT, "d1 d2")
REFUSED = SendGridFault("", expect(FAILED, SENT, "d2"), {"bulk": expect(SENT, SENT, "d1 d2")})
FATAL_ANSWER = expect(FATAL)
TOOK_IT_ANSWER_LOST = SendGridFault(
    "", expect(IN_DOUBT, RETRY, "d1"), {"bulk": expect(IN_DOUBT, IN_DOUBT, "d1 d2")}
)
LOST_NOT_TAKEN = SendGridFault("", expect(IN_DOUBT, RETRY), {"bulk": expect(IN_DOUBT, IN_DOUBT)})
LOST_EARLY = SendGridFault(
    "",
    expect({RETRY, IN_DOUBT}, RETRY),
    {"bulk": expect({RETRY, IN_DOUBT}, {RETRY, IN_DOUBT})},
)
FAR_FUTURE = "Fri, 31 Dec 9999 23:59:59 GMT"
DAY = MAX_RETRY_AFTER


def like(shape: SendGridFault, step: str) -> SendGridFault:
    return SendGridFault(step, shape.default, shape.by_client)


def later(step: str, retry_after: float | str | None = ANY_WAIT) -> SendGridFault:
    return SendGridFault(step, expect(RETRY, RETRY, retry_after=retry_after))


SENDGRID_FAULTS = [
    SendGridFault("202", ACCEPTED),
    SendGridFault("longid", ACCEPTED),
    *(
        SendGridFault(f"redirect:{code}:WITNESS", FATAL_ANSWER)
        for code in (301, 302, 303, 307, 308)
    ),
    like(REFUSED, "400"),
    like(REFUSED, "413"),
    like(REFUSED, "422"),
    like(REFUSED, "nul:400"),
    like(REFUSED, "echo:400"),
    SendGridFault("401", FATAL_ANSWER),
    SendGridFault("403", FATAL_ANSWER),
    SendGridFault("404", FATAL_ANSWER),
    SendGridFault("405", FATAL_ANSWER),
    SendGridFault("echo:401", FATAL_ANSWER),
    SendGridFault("echo:403", FATAL_ANSWER),
    later("429:7", 7.0),
    later("429", 1.0),
    later(f"429@{int((NOW + timedelta(seconds=90)).timestamp())}", 90.0),
    later("429:inf", DAY),
    later("429:1e15", DAY),
    later("429:1e400", DAY),
    later("429:nan", None),
    later("429:-5", 0.0),
    later(f"429:{FAR_FUTURE}", DAY),
    later("429:soon", None),
    later("429@inf", DAY),
    later("500", None),
    later("502", None),
    later("503", None),
    later("nul:503", None),
    later("echo:500", None),
    like(TOOK_IT_ANSWER_LOST, "delay:2"),  # the answer comes after the client's 0.5 s timeout
    like(TOOK_IT_ANSWER_LOST, "truncate"),
    like(TOOK_IT_ANSWER_LOST, "truncate-head"),
    like(LOST_NOT_TAKEN, "reset"),  # reset after the whole request was read
    like(LOST_EARLY, "reset-early"),  # reset before the body was read
    # A NUL in X-Message-Id: the official client reads it (and cleans it), aiohttp refuses the
    # header (answer unreadable: in doubt). Either way the provider has the message.
    SendGridFault(
        "nul:202",
        ACCEPTED,
        {"fast": TOOK_IT_ANSWER_LOST.default, "bulk": TOOK_IT_ANSWER_LOST.by_client["bulk"]},
    ),
    SendGridFault("echo:202", ACCEPTED),
]


@dataclass(frozen=True)
class SmtpFault:
    step: str
    expected: Expect


SMTP_FAULTS = [
    SmtpFault("250", ACCEPTED),
    SmtpFault("421", expect(RETRY, RETRY)),  # the server closes: the rest is not attempted
    SmtpFault("mail:421", expect(RETRY, RETRY)),
    SmtpFault("rcpt:421", expect(RETRY, RETRY)),
    SmtpFault("450", expect(RETRY, SENT, "d2")),  # temporary, this message only
    SmtpFault("mail:451", expect(RETRY, SENT, "d2")),
    SmtpFault("rcpt:452", expect(RETRY, SENT, "d2")),
    SmtpFault("mail:451+nul", expect(RETRY, SENT, "d2")),
    SmtpFault("550", expect(FAILED, SENT, "d2")),
    SmtpFault("554", expect(FAILED, SENT, "d2")),
    SmtpFault("rcpt:550", expect(FAILED, SENT, "d2")),
    SmtpFault("mail:553", expect(FAILED, SENT, "d2")),
    SmtpFault("550+nul", expect(FAILED, SENT, "d2")),
    SmtpFault("rcpt:550+nul", expect(FAILED, SENT, "d2")),
    SmtpFault("drop", expect(IN_DOUBT, RETRY, "d1")),  # dropped after the final '.'
    SmtpFault("slow:2", expect(IN_DOUBT, RETRY, "d1")),  # the reply comes after the timeout
    SmtpFault("mail:drop", expect(RETRY, RETRY)),
    SmtpFault("rcpt:drop", expect(RETRY, RETRY)),
]
EXTRA_CASES = ["sendgrid-refused-connection"] * len(SENDGRID_CLIENTS) + [
    "smtp-refused-connection",
    "smtp-535-echoing-the-password",
]
FAULTS_INJECTED = len(SENDGRID_FAULTS) * len(SENDGRID_CLIENTS) + len(SMTP_FAULTS) + len(EXTRA_CASES)


# -- checks shared by every case ----------------------------------------------------------------


def check_texts(results: list[SendResult], error: FatalTransportError | None, secret: str) -> None:
    user = "apikey" if secret == API_KEY else SMTP_USER
    for result in results:
        assert control_characters(result.detail) == [] and len(result.detail) <= MAX_DETAIL
        assert leaks(result.detail, secret, user) == []
        if result.provider_id is not None:
            assert control_characters(result.provider_id) == []
            assert 0 < len(result.provider_id) <= MAX_PROVIDER_ID
            assert leaks(result.provider_id, secret, user) == []
        if result.retry_after is not None:
            assert 0.0 <= result.retry_after <= MAX_RETRY_AFTER
    if error is not None:
        message = str(error)
        assert control_characters(message) == [] and len(message) <= MAX_ERROR
        assert leaks(message, secret, user) == []


def check(
    results: list[SendResult],
    error: FatalTransportError | None,
    accepted: set[str],
    expected: Expect,
    secret: str,
) -> None:
    check_texts(results, error, secret)
    if expected.first == FATAL:
        assert error is not None, f"expected a fatal error, got {results}"
        assert error.results == ()  # the fatal answer met the first email: nothing to record
    else:
        assert error is None, f"unexpected fatal error: {error}"
        first, second = results
        assert first.outcome in expected.first, first
        assert second.outcome in expected.second, second
        if expected.retry_after != ANY_WAIT:
            assert first.retry_after == expected.retry_after
    assert accepted == set(expected.accepted)


def send_two(
    transport: Transport, emails: list[OutgoingEmail]
) -> tuple[list[SendResult], FatalTransportError | None]:
    try:
        return transport.send(emails), None
    except FatalTransportError as exc:
        return [], exc


# -- SendGrid: official, fast and bulk ------------------------------------------------------------


@pytest.fixture(scope="module")
def witness() -> Iterator[Witness]:
    """Where every redirect points: it must never receive anything."""
    with Witness() as server:
        yield server
    assert server.requests == []


@pytest.mark.parametrize("client", SENDGRID_CLIENTS)
@pytest.mark.parametrize("fault", SENDGRID_FAULTS, ids=lambda f: f.step)
def test_sendgrid_fault(
    sendgrid: FakeSendGrid, witness: Witness, client: str, fault: SendGridFault
) -> None:
    sendgrid.add_script(fault.step.replace("WITNESS", f"{witness.url}/v3/mail/send"))
    make = bulk_email if client == "bulk" else make_email
    with sendgrid_client(client, sendgrid) as transport:
        results, error = send_two(transport, [make(1), make(2)])
    assert sendgrid.problems == []
    accepted = set(sendgrid.accepted_ids())
    assert all(n == 1 for n in sendgrid.accepted_ids().values())  # never sent twice
    check(results, error, accepted, fault.expected(client), API_KEY)
    assert witness.requests == []


@pytest.mark.parametrize("client", SENDGRID_CLIENTS)
def test_sendgrid_refused_connection(sendgrid: FakeSendGrid, client: str) -> None:
    make = bulk_email if client == "bulk" else make_email
    url = f"http://127.0.0.1:{free_port()}"
    with sendgrid_client(client, sendgrid, base_url=url) as transport:
        results, error = send_two(transport, [make(1), make(2)])
    check(results, error, set(), expect(RETRY, RETRY), API_KEY)
    assert all("not sent" in r.detail or "not attempted" in r.detail for r in results)


# -- SMTP over a real aiosmtpd server -------------------------------------------------------------


@pytest.mark.parametrize("fault", SMTP_FAULTS, ids=lambda f: f.step)
def test_smtp_fault(fault: SmtpFault) -> None:
    with FakeSmtp(users={SMTP_USER: SMTP_PASSWORD}) as fake:
        fake.add_script(fault.step)
        with smtp_transport(fake.url(SMTP_USER, SMTP_PASSWORD)) as transport:
            results, error = send_two(transport, [make_email(1), make_email(2)])
        accepted = {m.delivery_id or "" for m in fake.accepted}
        assert all(n == 1 for n in fake.accepted_ids().values())
    check(results, error, accepted, fault.expected, SMTP_PASSWORD)


def test_smtp_refused_connection() -> None:
    with smtp_transport(f"smtp://127.0.0.1:{free_port()}") as transport:
        results, error = send_two(transport, [make_email(1), make_email(2)])
    check(results, error, set(), expect(RETRY, RETRY), SMTP_PASSWORD)


def test_smtp_535_echoing_the_password() -> None:
    with FakeSmtp(users={SMTP_USER: "another"}, echo_auth=True) as fake:
        with smtp_transport(fake.url(SMTP_USER, SMTP_PASSWORD)) as transport:
            results, error = send_two(transport, [make_email(1), make_email(2)])
        assert fake.messages == []
    check(results, error, set(), expect(FATAL), SMTP_PASSWORD)


def test_count_of_faults_injected() -> None:
    # The figure docs/reliability.md quotes ("faults injected"), kept in step with the cases.
    cases = len(SENDGRID_FAULTS) * len(SENDGRID_CLIENTS) + len(SMTP_FAULTS) + len(EXTRA_CASES)
    assert cases == FAULTS_INJECTED
    print(f"faults injected: {FAULTS_INJECTED}")
