"""DRIP_WEB_SENDS: 'now' (the default) sends confirmation emails from the web process; 'queue'
leaves them, durably, to `drip send` / `drip worker`, with the same page for the reader."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.web_signup_support import confirmations, drain, form_token, signup, stop_sender
from tests.web_support import AppFactory, Clock

from drip import delivery
from drip.config import load_settings
from drip.errors import ConfigError
from drip.web.context import EXTENSION, WebContext
from drip.web.outbound import QueueOnly, outbound


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
    token = form_token(client)
    new = signup(client, "new@example.com", token=token, ip="198.51.100.1")
    again = signup(client, "new@example.com", token=token, ip="198.51.100.2")
    assert new.status_code == again.status_code == 200
    assert new.get_data() == again.get_data()  # known or new: the same page
    assert isinstance(outbound(app), QueueOnly)
    drain(app)
    time.sleep(0.2)
    outbox = tmp_path / "outbox"
    assert confirmations(outbox) == []  # nothing sent by the web process
    context = app.extensions[EXTENSION]
    assert isinstance(context, WebContext)
    sent = delivery.send_owed_confirmations(context.sessions, context.mailer, now=context.now())
    assert sent == 1  # what `drip send` and `drip worker` run first
    assert len(confirmations(outbox, "new@example.com")) == 1


def test_now_sends_from_the_web_process(
    make_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    app = make_app(database_url, tmp_path, clock=Clock(), trusted_proxies=1)
    client = app.test_client()
    assert signup(client, "now@example.com", ip="198.51.100.3").status_code == 200
    drain(app)
    assert len(confirmations(tmp_path / "outbox", "now@example.com")) == 1
    stop_sender(app)
