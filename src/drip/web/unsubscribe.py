"""Unsubscribe links (`/u/<token>`, in every lesson and in its List-Unsubscribe header).

`GET`/`HEAD` show a page with a button and change nothing. `POST` with the body
`List-Unsubscribe=One-Click` (RFC 8058: the mailbox provider's button, no cookies) unsubscribes
and answers 200, never a redirect; the page's own button is a POST with our CSRF token. Repeats
are harmless. Only the signed token says who: nothing else in the request is trusted.

A 200 means no further lesson: the unsubscribe commits, claims a running `drip send` holds for
this reader and has not handed over are given back (it skips them), and if a run was handing one
of this reader's lessons to the transport at that very moment, the answer waits (at most
HAND_OVER_WAIT_SECONDS) until that hand-over is over, so nothing is handed over after the 200.

The result page offers "resubscribe" (a fresh double opt-in, `POST /u/<token>/resubscribe`) and
"pause instead" (the manage page).
"""

from __future__ import annotations

import time

from flask import Blueprint, current_app, render_template, request

from drip import lifecycle
from drip.errors import InvalidTokenError
from drip.web.context import current
from drip.web.outbound import outbound
from drip.web.pages import check_csrf, invalid_link
from drip.web.security import csrf

bp = Blueprint("unsubscribe", __name__)

HAND_OVER_WAIT_SECONDS = 10.0
HAND_OVER_POLL_SECONDS = 0.02


def _read(token: str) -> int | None:
    context = current()
    try:
        return context.mailer.links.read("unsubscribe", token, now=context.now())
    except InvalidTokenError:
        return None


@bp.get("/u/<token>")
def page(token: str) -> str | tuple[str, int]:
    if _read(token) is None:
        return invalid_link()
    return render_template("unsubscribe.html", token=token)


@bp.post("/u/<token>")
def unsubscribe(token: str) -> str | tuple[str, int]:
    subscriber_id = _read(token)
    if subscriber_id is None:
        return invalid_link()
    one_click = request.form.get("List-Unsubscribe") == "One-Click"
    if not one_click:
        check_csrf()
    context = current()
    lifecycle.unsubscribe_by_link(
        context.sessions, context.course, subscriber_id, now=context.now()
    )
    _wait_for_hand_over(subscriber_id)
    return render_template(
        "unsubscribed.html",
        token=token,
        manage_url=context.mailer.links.manage_url(subscriber_id),
    )


def _wait_for_hand_over(subscriber_id: int) -> None:
    context = current()
    deadline = time.monotonic() + HAND_OVER_WAIT_SECONDS
    while lifecycle.handing_over(context.sessions, subscriber_id, now=context.now()):
        if time.monotonic() >= deadline:
            return
        time.sleep(HAND_OVER_POLL_SECONDS)


@bp.post("/u/<token>/resubscribe")
def resubscribe(token: str) -> str | tuple[str, int]:
    subscriber_id = _read(token)
    if subscriber_id is None:
        return invalid_link()
    context = current()
    if lifecycle.renew_confirmation(context.sessions, subscriber_id, now=context.now()):
        outbound(current_app).wake()
    return render_template("check_inbox.html", resubscribing=True)


# RFC 8058: the one-click POST carries no cookie; the view checks CSRF for every other POST.
csrf.exempt(unsubscribe)
