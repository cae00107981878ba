"""DRIP_WEB_SENDS: 'now' (the default) sends confirmation emails from the web process; 'queue'
leaves them, durably, to `drip send` / `drip worker`, with the same page for the reader, and
still sends lesson 1 at once after a confirm."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from tests.support import COURSE
from tests.web_signup_support import (
    confirm_token,
    confirmations,
    csrf_of,
    drain,
    form_token,
    lessons,
    signup,
    stop_sender,
)
from tests.web_support import AppFactory, Clock

from drip import delivery
from drip.config import load_settings
from drip.errors import ConfigError
from drip.store import optin
from drip.web import outbound as outbound_module
from drip.web.context import EXTENSION, WebContext


def test_the_setting_defaults_to_now_and_refuses_unknown_values() -> None:
    assert load_settings({}).web_sends == "now"
    assert load_settings({"DRIP_WEB_SENDS": " Queue "}).web_sends == "queue"
    with pytest.raises(ConfigError, match="DRIP_WEB_SENDS"):
        load_settings({"DRIP_WEB_SENDS": "later"})


def test_queue_only_sends_nothing_and_drip_send_sends_what_was_queued(
    make_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    app = make_app(database_url, tmp_path, clock=Clock(), trusted_proxies=1, web_sends="queue")
    client = app.test_client()
    form = form_token(client)
    new = signup(client, "new@example.com", token=form, ip="198.51.100.1")
    again = signup(client, "new@example.com", token=form, ip="198.51.100.2")
    assert new.status_code == again.status_code == 200
    assert new.get_data() == again.get_data()  # known or new: the same page
    drain(app)
    time.sleep(0.2)
    outbox = tmp_path / "outbox"
    assert confirmations(outbox) == []  # nothing sent by the web process
    context = app.extensions[EXTENSION]
    assert isinstance(context, WebContext)
    sent = delivery.send_owed_confirmations(context.sessions, context.mailer, now=context.now())
    assert sent == 1  # what `drip send` and `drip worker` run first
    found = confirmations(outbox, "new@example.com")
    assert len(found) == 1
    token = confirm_token(found[0])
    assert signup(client, "later@example.com", token=form, ip="198.51.100.4").status_code == 200
    page = client.get(f"/c/{token}").get_data(as_text=True)
    assert client.post(f"/c/{token}", data={"csrf_token": csrf_of(page)}).status_code == 200
    drain(app)  # lesson 1 goes out from the web process at once, as the page says
    assert lessons(outbox, "new@example.com") == [COURSE.lessons[0].slug]
    assert confirmations(outbox, "later@example.com") == []  # still left to `drip send`
    stop_sender(app)


def test_now_sends_from_the_web_process(
    make_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    app = make_app(database_url, tmp_path, clock=Clock(), trusted_proxies=1)
    client = app.test_client()
    assert signup(client, "now@example.com", ip="198.51.100.3").status_code == 200
    drain(app)
    assert len(confirmations(tmp_path / "outbox", "now@example.com")) == 1
    stop_sender(app)


def test_now_sends_a_burst_of_signups_as_one_batch(
    make_app: AppFactory, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Taking and settling owed confirmations costs two transactions per batch: the sender waits
    # a moment after a wake-up so that a burst is one batch, not one batch per signup.
    monkeypatch.setattr(outbound_module, "GATHER_SECONDS", 1.0)
    taken: list[int] = []
    take = optin.take_owed_confirmations

    def counted(*args: Any, **kwargs: Any) -> Any:
        owed = take(*args, **kwargs)
        if owed:
            taken.append(len(owed))
        return owed

    monkeypatch.setattr(optin, "take_owed_confirmations", counted)
    app = make_app(database_url, tmp_path, clock=Clock(), trusted_proxies=1)
    client = app.test_client()
    form = form_token(client)
    for n in range(10):
        reply = signup(client, f"burst{n}@example.com", token=form, ip=f"198.51.100.{n + 10}")
        assert reply.status_code == 200
    drain(app)
    assert taken == [10]
    assert all(
        len(confirmations(tmp_path / "outbox", f"burst{n}@example.com")) == 1 for n in range(10)
    )
    stop_sender(app)
