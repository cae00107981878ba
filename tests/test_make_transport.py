"""make_transport: the transport the settings name, configured from them."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.transport_support import API_KEY, make_email, seen_in_mime

from drip.config import Settings, load_settings
from drip.errors import ConfigError
from drip.transports import Outcome, make_transport
from drip.transports.sendgrid.fast import FastSendGridTransport
from drip.transports.sendgrid.official import SendGridTransport


def test_make_transport_builds_each_kind(tmp_path: Path, sendgrid: FakeSendGrid) -> None:
    outbox = make_transport(
        Settings(outbox_dir=tmp_path, from_address="講座 <course@drip.example>")
    )
    assert outbox.name == "outbox"
    [result] = outbox.send([make_email(1)])
    seen = seen_in_mime((tmp_path / str(result.provider_id)).read_bytes())
    assert seen.extra["Message-ID"].endswith("@drip.example>")

    sg = make_transport(
        Settings(transport="sendgrid", sendgrid_api_key=API_KEY, sendgrid_api_url=sendgrid.url)
    )
    assert sg.name == "sendgrid"
    assert sg.send([make_email(2)])[0].outcome is Outcome.SENT

    smtp_settings = Settings(transport="smtp", smtp_url="smtp://127.0.0.1:1025")
    assert make_transport(smtp_settings).name == "smtp"
    assert make_transport(Settings(transport="memory")).name == "memory"


@pytest.mark.parametrize(
    "settings",
    [
        Settings(transport="carrier-pigeon"),
        Settings(transport="sendgrid"),
        Settings(transport="smtp"),
    ],
)
def test_make_transport_config_errors(settings: Settings) -> None:
    with pytest.raises(ConfigError):
        make_transport(settings)


def test_selection_fast_by_default_official_on_request() -> None:
    env = {"SENDGRID_API_KEY": "SG.k", "DRIP_SENDGRID_RATE": "100", "DRIP_SENDGRID_WINDOW": "32"}
    chosen = make_transport(load_settings(env))
    assert isinstance(chosen, FastSendGridTransport) and chosen.window == 32
    chosen.close()
    official = make_transport(load_settings({**env, "DRIP_SENDGRID_CLIENT": "official"}))
    assert isinstance(official, SendGridTransport)
    with pytest.raises(ConfigError, match="DRIP_SENDGRID_RATE"):
        load_settings({**env, "DRIP_SENDGRID_RATE": "-1"})
    with pytest.raises(ConfigError, match="DRIP_SENDGRID_CLIENT"):
        load_settings({**env, "DRIP_SENDGRID_CLIENT": "curl"})
    assert Settings().sendgrid_client == "fast"
