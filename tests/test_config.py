"""Settings from the environment: defaults, transport choice, errors that name the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drip.config import DEFAULT_DATABASE_URL, load_settings, signing_keys
from drip.errors import ConfigError


def test_defaults_run_anywhere() -> None:
    settings = load_settings({})
    assert settings.transport == "outbox"
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.uses_embedded_database
    assert settings.outbox_dir == Path("outbox")
    assert settings.base_url == "http://127.0.0.1:8000"


def test_an_api_key_selects_sendgrid_and_stays_out_of_repr() -> None:
    settings = load_settings(
        {"SENDGRID_API_KEY": "SENTINEL-SECRET", "DRIP_SMTP_URL": "smtp://u:PW@h"}
    )
    assert settings.transport == "sendgrid"
    assert "SENTINEL-SECRET" not in repr(settings)
    assert "PW" not in repr(settings)


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"DRIP_TRANSPORT": "pigeon"}, "DRIP_TRANSPORT"),
        ({"DRIP_TRANSPORT": "sendgrid"}, "SENDGRID_API_KEY"),
        ({"DRIP_TRANSPORT": "smtp"}, "DRIP_SMTP_URL"),
        ({"DRIP_TRANSPORT": "smtp", "DRIP_SMTP_URL": "http://x:secretpw@h"}, "DRIP_SMTP_URL"),
        ({"DRIP_BASE_URL": "example.com"}, "DRIP_BASE_URL"),
        ({"DRIP_SENDGRID_API_URL": "ftp://x"}, "DRIP_SENDGRID_API_URL"),
        ({"DRIP_FROM": "講座事務局"}, "DRIP_FROM"),
    ],
)
def test_invalid_settings_name_the_variable(environ: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names) as caught:
        load_settings(environ)
    assert "secretpw" not in str(caught.value)


def test_signing_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert signing_keys(load_settings({"DRIP_SECRET_KEY": "new, old"})) == ("new", "old")
    with pytest.raises(ConfigError, match="DRIP_SECRET_KEY"):
        signing_keys(load_settings({"DRIP_DATABASE_URL": "postgresql+psycopg://h/db"}))
    first = signing_keys(load_settings({}))
    assert signing_keys(load_settings({})) == first  # kept in drip-secret.key
    assert (os.stat(tmp_path / "drip-secret.key").st_mode & 0o777) == 0o600
