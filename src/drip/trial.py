"""`drip course send-test`: one lesson (or the confirmation email) to the author's own inbox.

Rendered with sample data through the configured transport, the subject marked as a test, and
recorded nowhere: no subscriber, no ledger row. Its links carry subscriber id 0, which no
subscriber has, so following them changes nothing.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from drip.addresses import clean_name, normalize_email
from drip.delivery import Mailer
from drip.preview import SAMPLE_NAME, select_lessons
from drip.render import RenderedEmail
from drip.transports.base import SendResult

TEST_SUBJECT_PREFIX = "[テスト送信] "
CONFIRMATION = "confirmation"
NOBODY = 0
"""The subscriber id of a test email's links: ids start at 1, so they reach nobody."""


def send_test(
    mailer: Mailer, what: str, *, to: str, name: str | None, now: datetime
) -> tuple[str, SendResult]:
    """Send lesson `what` (slug or number) or the confirmation email (`"confirmation"`) to `to`.

    Returns the subject sent and the transport's result. Raises `UsageError` for an unknown
    lesson and `InvalidAddressError` for a bad address or name; the transport is opened and
    closed here.
    """
    address = normalize_email(to)
    recipient = mailer.recipient(NOBODY, address, clean_name(name) or SAMPLE_NAME)
    rendered: RenderedEmail
    if what == CONFIRMATION:
        rendered = mailer.renderer.confirmation(
            recipient, mailer.links.confirm_url(NOBODY, now=now)
        )
    else:
        [lesson] = select_lessons(mailer.course, what)
        rendered = mailer.renderer.lesson(lesson, recipient, fill=True)
    marked = dataclasses.replace(
        rendered, subject=TEST_SUBJECT_PREFIX + rendered.subject, bulk=None
    )
    message = mailer.envelope(
        f"test-{int(now.timestamp())}", recipient, marked, {"drip_test": "1"}, now=now
    )
    with mailer.transport:
        [result] = mailer.transport.send([message])
    return marked.subject, result
