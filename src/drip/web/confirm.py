"""Confirm links (`/c/<token>`, the double opt-in email's link).

`GET` shows a page with a button and changes nothing (mail scanners follow every link); `POST`
(CSRF-protected) confirms. Lesson 1 then goes out right away through the same claims as
`drip send` (`drip.web.outbound`), unless quiet hours say later: the page says when, in the
reader's own time. An expired link (older than 7 days) offers "send me a new link"
(`POST /c/<token>/renew`), which queues a new confirmation email under the usual rules and
answers the same page whatever the subscriber's state.
"""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, current_app, render_template

from drip import lifecycle
from drip.errors import InvalidTokenError
from drip.links import CONFIRM_MAX_AGE_SECONDS
from drip.web.context import current
from drip.web.outbound import outbound
from drip.web.pages import invalid_link, local_moment

bp = Blueprint("confirm", __name__)


def _read(token: str) -> tuple[int, datetime, bool] | None:
    """(subscriber id, signed at, expired) of a confirm token that verifies; else None."""
    links = current().mailer.links
    try:
        subscriber_id, signed_at = links.confirm_token(token)
    except InvalidTokenError:
        return None
    age = (current().now() - signed_at).total_seconds()
    if age < 0:
        return None  # signed in the future: not a link we sent
    return subscriber_id, signed_at, age > CONFIRM_MAX_AGE_SECONDS


@bp.get("/c/<token>")
def page(token: str) -> str | tuple[str, int]:
    found = _read(token)
    if found is None:
        return invalid_link()
    if found[2]:
        return render_template("confirm_expired.html", token=token), 410
    return render_template("confirm.html", token=token)


@bp.post("/c/<token>")
def confirm(token: str) -> str | tuple[str, int]:
    found = _read(token)
    if found is None:
        return invalid_link()
    subscriber_id, signed_at, expired = found
    if expired:
        return render_template("confirm_expired.html", token=token), 410
    context = current()
    now = context.now()
    result = lifecycle.confirm_by_link(
        context.sessions, context.course, subscriber_id, signed_at=signed_at, now=now
    )
    if result.outcome is lifecycle.Confirmed.UNKNOWN:
        return invalid_link()
    when = None
    soon = False
    if result.next_send_at is not None and result.timezone is not None:
        soon = result.next_send_at <= now
        when = local_moment(result.next_send_at, result.timezone)
        if result.outcome is lifecycle.Confirmed.CONFIRMED and soon:
            outbound(current_app).send_first_lesson(subscriber_id)
    return render_template(
        "confirmed.html",
        outcome=result.outcome.value,
        resumed=result.resumed,
        when=when,
        soon=soon,
        zone=result.timezone,
        manage_url=context.mailer.links.manage_url(subscriber_id),
    )


@bp.post("/c/<token>/renew")
def renew(token: str) -> str | tuple[str, int]:
    found = _read(token)
    if found is None:
        return invalid_link()
    context = current()
    if lifecycle.renew_confirmation(context.sessions, found[0], now=context.now()):
        outbound(current_app).wake()
    return render_template("check_inbox.html", renewed=True)
