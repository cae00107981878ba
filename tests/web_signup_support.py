"""Helpers for the signup, confirm and unsubscribe tests: posting the form as a browser would,
reading the emails the outbox received, and looking at the database."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from tests.support import COURSE

from drip import store
from drip.db import make_engine
from drip.models import Delivery, Subscriber
from drip.transports.base import Transport
from drip.web.context import EXTENSION, WebContext
from drip.web.outbound import outbound

BASE = "https://drip.example.jp"
FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')
CSRF_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
CONFIRM_LINK = re.compile(re.escape(BASE) + r"/c/([A-Za-z0-9_\-.]+)")


def form_token(client: FlaskClient) -> str:
    match = FORM_TOKEN.search(client.get("/").get_data(as_text=True))
    assert match, "the signup page has no form token"
    return match.group(1)


def signup(
    client: FlaskClient,
    address: str,
    *,
    token: str | None = None,
    ip: str | None = None,
    headers: dict[str, str] | None = None,
    **fields: str,
) -> Any:
    """POST /subscribe as our own form does (form token, `Origin: null`)."""
    data = {"email": address, "timezone": "Asia/Tokyo", **fields}
    data["form_token"] = token if token is not None else form_token(client)
    sent = {"Origin": "null", **(headers or {})}
    if ip is not None:
        sent["X-Forwarded-For"] = ip
    return client.post("/subscribe", data=data, headers=sent)


def drain(app: Flask) -> None:
    """Wait until the app's background sender has nothing left to do."""
    assert outbound(app).wait_idle(30), "the background sender did not finish in 30 s"


def use_transport(app: Flask, transport: Transport) -> None:
    """Give the app's mailer another transport (before its background sender starts)."""
    context = app.extensions[EXTENSION]
    assert isinstance(context, WebContext)
    mailer = dataclasses.replace(context.mailer, transport=transport)
    app.extensions[EXTENSION] = dataclasses.replace(context, mailer=mailer)


def emails(outbox: Path) -> list[email.message.EmailMessage]:
    found = []
    for path in sorted(outbox.rglob("*.eml"), key=lambda p: p.stat().st_mtime_ns):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        found.append(message)
    return found


def text_of(message: email.message.EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def confirmations(outbox: Path, address: str | None = None) -> list[email.message.EmailMessage]:
    """The confirmation emails in the outbox (to `address` only, if given)."""
    return [
        message
        for message in emails(outbox)
        if "/c/" in text_of(message) and (address is None or address in str(message["To"]))
    ]


def lessons(outbox: Path, address: str) -> list[str]:
    """Subjects of the lessons `address` received."""
    subjects = {lesson.subject: lesson.slug for lesson in COURSE.lessons}
    return [
        subjects[str(message["Subject"])]
        for message in emails(outbox)
        if address in str(message["To"]) and str(message["Subject"]) in subjects
    ]


def confirm_token(message: email.message.EmailMessage) -> str:
    match = CONFIRM_LINK.search(text_of(message))
    assert match, "no confirm link in the email"
    return match.group(1)


def csrf_of(page: str) -> str:
    match = CSRF_TOKEN.search(page)
    assert match, "the page has no CSRF token"
    return match.group(1)


class Db:
    """Direct look-ups and changes on the test database."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    def subscriber(self, address: str) -> store.SubscriberView | None:
        from sqlalchemy.orm import Session

        with Session(self.engine) as session:
            return store.get_subscriber(session, COURSE.id, address)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return len(conn.execute(select(Subscriber.id)).all())

    def set(self, address: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(Subscriber).where(Subscriber.email == address).values(**values))

    def deliveries(self, address: str) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Delivery.lesson, Delivery.status)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Subscriber.email == address)
                .order_by(Delivery.id)
            )
            return [(row.lesson, row.status) for row in rows]


def stop_sender(app: Flask) -> None:
    """End the app's background sender, if it started (at the end of a test)."""
    found = app.extensions.get("drip.outbound")
    if found is not None:
        found.stop()


def clock_of(app: Flask) -> Any:
    context = app.extensions[EXTENSION]
    assert isinstance(context, WebContext)
    return context.clock
